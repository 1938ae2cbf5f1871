/* The fast step's kernels (ecmt/runtime/program.py): each stateful node's update,
 * and an ECM fused with the MT neuron that follows it, as one pass over memory.
 *
 * Built on first use (ecmt/runtime/native.py) with the system C compiler, OpenMP
 * and -ffp-contract=off: the MT rule makes exactly the comparisons of
 * kernels.mt_levels / mt_multi_levels, in the same float32 operations, so its
 * spikes are the reference's bit for bit given the same membrane.  The ECMs'
 * functions (erf, exp, tanh) come from the C library (vectorized by libmvec where
 * the build has it) and may differ from torch's in the last bit.
 *
 * Layouts: every tensor is contiguous float32 [batch, n] (n elements per sample);
 * row kernels see [batch, rows, len] and work along len.  Thresholds are th_len
 * values (1: one per tensor; n: one per element of a sample), th_neg NULL for
 * positive levels only.  t is the step as a float, scale_t = scale / t (float64
 * rounded to float32, as torch's .float()).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef ECMT_SIMD_MATH
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
float erff(float);
#pragma omp declare simd notinbranch
float tanhf(float);
#endif

/* ECM functions (f of the ECM's running average), by number (native.py: FUNCTIONS). */
enum { F_RELU, F_GELU, F_GELU_TANH, F_SILU, F_SIGMOID, F_HARDSWISH, F_SOFTMAX, F_LAYER_NORM };

/* One MT neuron: the thresholds and rule, and where its state lives. */
typedef struct {
    const float *th_pos, *th_neg;   /* th_neg NULL: positive levels only */
    int64_t th_len;                 /* 1 or n */
    int32_t levels, k;
} mt_rule;

#define INLINE static inline __attribute__((always_inline))
#define CHUNK 256       /* elements per pass of the level loop: its arrays stay in L1 */

/* floor(log2(y)) for y >= 2^-126 from its exponent bits, and 2^j for -126 <= j <= 127, exactly. */
INLINE int32_t exponent(float y)
{
    int32_t i;
    memcpy(&i, &y, sizeof i);
    return ((i >> 23) & 0xff) - 127;
}

INLINE float pow2(int32_t j)
{
    const int32_t i = (j + 127) << 23;
    float f;
    memcpy(&f, &i, sizeof f);
    return f;
}

/* The spike of membrane v for k = 1 (kernels.mt_levels): the largest level j with
 * |v| >= th 2^j - th / 2, found without a loop over levels, so that it inlines into a
 * vectorized loop over elements: j from the exponent of |v| / th + 1/2 (an estimate; rc is
 * 1 / th, or 0 to divide), corrected by one either way with the exact comparisons (the
 * boundaries grow with j, so the crossed levels are 0..j and one correction suffices): the
 * same comparisons' verdict as the loop, for any v.  th_neg = th_pos where there are no
 * negative levels (has_neg = 0: no spike below zero).  *m: the level number, signed like the
 * spike (0 for none). */
INLINE float fire1(float v, float th_pos, float th_neg, float rc_pos, float rc_neg, const int divide, int has_neg,
                   int levels, int32_t *m)
{
    const int pos = v >= 0.0f;
    const float th = pos ? th_pos : th_neg, mag = fabsf(v), half = th * 0.5f;
    const float q = divide ? mag / th : mag * (pos ? rc_pos : rc_neg);
    int32_t e = exponent(q + 0.5f);
    e = e > levels - 1 ? levels - 1 : e;
    e = e < -1 ? -1 : e;
    const float at = th * pow2(e), above = at * 2.0f;              /* th 2^e, th 2^(e + 1): exact */
    const int32_t up = (e < levels - 1) & (mag >= above - half);
    const int32_t down = (e >= 0) & (mag < at - half);
    const float stay = e >= 0 ? at : 0.0f, lower = e >= 1 ? at * 0.5f : 0.0f;
    const float s = up ? above : (down ? lower : stay);
    const int32_t j = e + up - down;
    *m = pos ? j + 1 : (has_neg ? -(j + 1) : 0);
    return pos ? s : (has_neg ? -s : 0.0f);
}

/* The spikes s of the membranes v[0..len) for k > 1 (kernels.mt_multi_levels) and, in m,
 * the levels fired as binary digits, signed like the spike.  Thresholds th_pos[e],
 * th_neg[e] (NULL: none below zero) with e = 0 (scalar) or the element.  One vectorized
 * pass over the chunk per level, from the top. */
INLINE void fire_multi(const float *v, int64_t len, const float *th_pos, const float *th_neg, const int scalar,
                       int levels, int k, float *s, int32_t *m)
{
    float th[CHUNK], mag[CHUNK], half[CHUNK];
    int32_t fired[CHUNK], count[CHUNK];
    const int has_neg = th_neg != NULL;
    const float *tn = has_neg ? th_neg : th_pos;
    if (scalar) {
        const float p0 = th_pos[0], n0 = tn[0];
        #pragma omp simd
        for (int64_t i = 0; i < len; i++)
            th[i] = v[i] >= 0.0f ? p0 : n0;
    } else {
        #pragma omp simd
        for (int64_t i = 0; i < len; i++)
            th[i] = v[i] >= 0.0f ? th_pos[i] : tn[i];
    }
    #pragma omp simd
    for (int64_t i = 0; i < len; i++) {
        mag[i] = fabsf(v[i]);
        half[i] = th[i] * 0.5f;
        s[i] = 0.0f;
        fired[i] = count[i] = 0;
    }
    float p = (float)(1u << (levels - 1));
    for (int j = levels - 1; j >= 0; j--, p *= 0.5f) {
        #pragma omp simd
        for (int64_t i = 0; i < len; i++) {
            const float value = th[i] * p;
            const int crossed = (mag[i] - s[i] >= value - half[i]) & (count[i] < k);
            s[i] = crossed ? s[i] + value : s[i];
            fired[i] |= crossed << j;
            count[i] += crossed;
        }
    }
    #pragma omp simd
    for (int64_t i = 0; i < len; i++) {
        const int pos = v[i] >= 0.0f;
        s[i] = pos ? s[i] : (has_neg ? -s[i] : 0.0f);
        if (m)
            m[i] = pos ? fired[i] : (has_neg ? -fired[i] : 0);
    }
}

/* An MT neuron's spikes for the membranes v[0..len) (elements first.. of their sample, for
 * per-element thresholds) into s, the levels fired into m (may be NULL). */
INLINE void fire(const mt_rule *r, const float *v, int64_t len, int64_t first, float *s, int32_t *m)
{
    const int scalar = r->th_len == 1, has_neg = r->th_neg != NULL;
    const float *tp = r->th_pos + (scalar ? 0 : first);
    const float *tn = has_neg ? r->th_neg + (scalar ? 0 : first) : tp;
    if (r->k > 1) {
        fire_multi(v, len, tp, has_neg ? tn : NULL, scalar, r->levels, r->k, s, m);
        return;
    }
    const int levels = r->levels;
    /* one loop per case, so that each vectorizes: the threshold's reciprocal once where
     * it is one value (divide where it overflows: a subnormal threshold) */
#define FIRE_LOOP(TP, TN, RP, RN, DIVIDE) do { \
        if (m) { _Pragma("omp simd") for (int64_t i = 0; i < len; i++) { \
                int32_t mm; s[i] = fire1(v[i], TP, TN, RP, RN, DIVIDE, has_neg, levels, &mm); m[i] = mm; } } \
        else { _Pragma("omp simd") for (int64_t i = 0; i < len; i++) { \
                int32_t mm; s[i] = fire1(v[i], TP, TN, RP, RN, DIVIDE, has_neg, levels, &mm); } } \
    } while (0)
    if (scalar) {
        const float p0 = tp[0], n0 = tn[0], rp = 1.0f / p0, rn = 1.0f / n0;
        if (isfinite(rp) && isfinite(rn))
            FIRE_LOOP(p0, n0, rp, rn, 0);
        else
            FIRE_LOOP(p0, n0, 0.0f, 0.0f, 1);
    } else {
        FIRE_LOOP(tp[i], tn[i], 0.0f, 0.0f, 1);
    }
#undef FIRE_LOOP
}

/* What hw_sim counts of each spike (kernels.mt_update_coded and mt_multi_update_coded
 * define the codes): the level number m plus levels, plus 2 levels + 1 where the update
 * was active (its input non-zero); uint8 for k = 1, and for k > 1 int16 over the fired
 * levels' binary digits.  Either written per element (code) or, for k = 1, counted per
 * sample (counts: count_levels, added to atomically where `shared`: several threads work
 * on one sample). */
typedef struct {
    void *code;             /* per element, or NULL */
    int64_t *counts;        /* [batch, 2 levels + 2] (k = 1), or NULL */
} events;

/* Per sample, for k = 1 (events.counts): how many elements fired each level -levels..levels
 * (0: none), then how many updates were active.  A histogram one element at a time waits on
 * its increments; here the level numbers c = m + levels are counted in 8-bit fields, four to a
 * 32-bit word (word c / 4), LANES words side by side (a vector): per word and LANES elements, one
 * compare and one masked add, the words in registers (count_words is inlined with `words` a
 * constant).  A lane sees at most CHUNK / LANES < 256 elements of a chunk: no field overflows. */
#define LANES 16
#define MAX_WORDS 8     /* levels <= 15; more: one element at a time */

INLINE void count_words(int64_t *local, int64_t len, const int32_t *m, int levels, const int words)
{
    uint32_t acc[MAX_WORDS][LANES];
    memset(acc, 0, sizeof acc);
    const int64_t whole = len - len % LANES;
    for (int64_t i = 0; i < whole; i += LANES) {
        #pragma omp simd
        for (int l = 0; l < LANES; l++) {
            const uint32_t c = (uint32_t)(m[i + l] + levels), one = 1u << (8 * (c & 3u)), word = c >> 2;
            for (int w = 0; w < words; w++)
                acc[w][l] += one & -(uint32_t)(word == (uint32_t)w);
        }
    }
    for (int w = 0; w < words; w++) {
        uint32_t even = 0, odd = 0;     /* fields 0, 2 and 1, 3 in 16 bits: at most CHUNK each */
        #pragma omp simd reduction(+ : even, odd)
        for (int l = 0; l < LANES; l++) {
            even += acc[w][l] & 0x00ff00ffu;
            odd += (acc[w][l] >> 8) & 0x00ff00ffu;
        }
        local[4 * w] += even & 0xffff;
        local[4 * w + 1] += odd & 0xffff;
        local[4 * w + 2] += even >> 16;
        local[4 * w + 3] += odd >> 16;
    }
    for (int64_t i = whole; i < len; i++)
        local[m[i] + levels]++;
}

INLINE void count_levels(int64_t *out, int64_t len, const int32_t *m, const int8_t *active, int levels, int shared)
{
    const int values = 2 * levels + 1, words = (values + 3) / 4;
    int64_t local[4 * words + 1];
    memset(local, 0, sizeof local);
    int32_t on = 0;
    #pragma omp simd reduction(+ : on)
    for (int64_t i = 0; i < len; i++)
        on += active[i];
    switch (words) {
    case 1: count_words(local, len, m, levels, 1); break;
    case 2: count_words(local, len, m, levels, 2); break;
    case 3: count_words(local, len, m, levels, 3); break;
    case 4: count_words(local, len, m, levels, 4); break;
    case 5: count_words(local, len, m, levels, 5); break;
    case 6: count_words(local, len, m, levels, 6); break;
    case 7: count_words(local, len, m, levels, 7); break;
    case 8: count_words(local, len, m, levels, 8); break;
    default:
        for (int64_t i = 0; i < len; i++)
            local[m[i] + levels]++;
    }
    local[values] = on;
    for (int c = 0; c <= values; c++) {
        if (local[c] && shared) {
            #pragma omp atomic
            out[c] += local[c];
        } else if (local[c]) {
            out[c] += local[c];
        }
    }
}

INLINE void put_events(const events *ev, int64_t at, int64_t sample, int64_t len, const int32_t *m,
                       const int8_t *active, int levels, int k, int shared)
{
    if (ev->code && k == 1) {
        uint8_t *c = (uint8_t *)ev->code + at;
        #pragma omp simd
        for (int64_t i = 0; i < len; i++)
            c[i] = (uint8_t)(m[i] + levels + (active[i] ? 2 * levels + 1 : 0));
    } else if (ev->code) {
        int16_t *c = (int16_t *)ev->code + at;
        const int span = (1 << levels) - 1;
        #pragma omp simd
        for (int64_t i = 0; i < len; i++)
            c[i] = (int16_t)(m[i] + span + (active[i] ? 2 * span + 1 : 0));
    }
    if (ev->counts && k == 1)
        count_levels(ev->counts + sample * (2 * levels + 2), len, m, active, levels, shared);
}

/* An MT neuron's input as a strided view (a select, permute or reshape of another node's output,
 * read where it lies instead of copied): per sample, `dims` sizes and strides (in elements), the
 * elements taken in row-major order, samples `sample` elements apart. */
#define MAX_DIMS 6
typedef struct {
    int32_t dims;
    int64_t sample, size[MAX_DIMS], stride[MAX_DIMS];
} strided;

/* Elements first .. first + len - 1 (row-major) of one sample's strided view at base, into out. */
INLINE void gather(const float *base, const strided *l, int64_t first, int64_t len, float *out)
{
    const int last = l->dims - 1;
    int64_t index[MAX_DIMS], at = 0, rest = first;
    for (int d = last; d >= 0; d--) {
        index[d] = rest % l->size[d];
        rest /= l->size[d];
        at += index[d] * l->stride[d];
    }
    const int64_t inner = l->size[last], step = l->stride[last];
    for (int64_t i = 0; i < len;) {
        int64_t run = inner - index[last];
        run = run < len - i ? run : len - i;
        const float *p = base + at;
        if (step == 1) {                /* runs are often a few vectors: a loop, not a memcpy call */
            #pragma omp simd
            for (int64_t j = 0; j < run; j++)
                out[i + j] = p[j];
        } else {
            for (int64_t j = 0; j < run; j++)
                out[i + j] = p[j * step];
        }
        i += run;
        at += run * step;
        index[last] += run;
        for (int d = last; d > 0 && index[d] == l->size[d]; d--) {     /* carry into the next axis out */
            at += l->stride[d - 1] - l->size[d] * l->stride[d];
            index[d] = 0;
            index[d - 1]++;
        }
    }
}

/* One sample's row of an MT neuron's step; pair is a constant where it is inlined, so
 * that each case compiles to its own vectorized loops.  x: the sample's input (contiguous, or
 * a strided view where xl is given); s_out (NULL: not written) the spikes; spike_sum (NULL:
 * none) the spikes' running sum, for the product that reads it as its operand. */
INLINE void mt_row(int64_t n, const float *x, const strided *xl, const float *addend, float scale, float *st,
                   float *s_out, float *spike_sum, const mt_rule *r, const int pair, const int first,
                   const events *ev, int64_t sample)
{
    float v[CHUNK], gathered[CHUNK], spikes[CHUNK];
    int32_t m[CHUNK];
    int8_t active[CHUNK];
    const int record = ev != NULL && (ev->code || ev->counts);
    for (int64_t start = 0; start < n; start += CHUNK) {
        const int64_t len = n - start < CHUNK ? n - start : CHUNK;
        const float *xc = x + start;
        if (xl) {
            gather(x, xl, start, len, gathered);
            xc = gathered;
        }
        if (addend) {
            const float *a = addend + start;
            #pragma omp simd
            for (int64_t i = 0; i < len; i++)
                gathered[i] = xc[i] + a[i];
            xc = gathered;
        }
        if (scale != 1.0f) {
            #pragma omp simd
            for (int64_t i = 0; i < len; i++)
                gathered[i] = xc[i] * scale;
            xc = gathered;
        }
        float *sc = st + start, *out = s_out ? s_out + start : spikes;
        #pragma omp simd
        for (int64_t i = 0; i < len; i++) {
            const float state = first ? 0.0f : sc[i];
            v[i] = pair ? xc[i] - state : state + xc[i];
        }
        fire(r, v, len, start, out, record ? m : NULL);
        #pragma omp simd
        for (int64_t i = 0; i < len; i++)
            sc[i] = pair ? (first ? 0.0f : sc[i]) + out[i] : v[i] - out[i];
        if (spike_sum) {
            float *c = spike_sum + start;
            #pragma omp simd
            for (int64_t i = 0; i < len; i++)
                c[i] = (first ? 0.0f : c[i]) + out[i];
        }
        if (record) {
            #pragma omp simd
            for (int64_t i = 0; i < len; i++)
                active[i] = xc[i] != 0.0f;
            put_events(ev, sample * n + start, sample, len, m, active, r->levels, r->k, 0);
        }
    }
}

/* An MT neuron's step.  pair = 0: state is the membrane v; v += x, s = fire(v), v -= s.
 * pair = 1: state is the spike sum C and x the running output of the ECM before it
 * (runtime/program.py: the membrane is x - C); s = fire(x - C), C += s.
 * x: contiguous [batch, n], or a strided view where xl is not NULL; addend (NULL: none) n values
 * added to each sample's x (the bias of the linear layer before it, which then leaves it out);
 * x is multiplied by scale (pair = 1 after a product: x is its raw A_t B_t, scale its scale / t);
 * s_out may be NULL (the spikes are not written), spike_sum (pair = 0) may be NULL (none kept).
 * first: step 1, where the state and spike sum are read as zeros (not zeroed before the run).
 * ev (pair = 0 only; its fields may be NULL): the event codes or counts. */
void mt_step(int64_t batch, int64_t n, const float *x, const strided *xl, const float *addend, float scale,
             float *state, float *s_out, float *spike_sum, mt_rule r, int pair, int first, events ev, int threads)
{
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 4) if (batch * n > 16384)
    for (int64_t b = 0; b < batch; b++) {
        const int64_t o = b * n;
        const float *xb = x + (xl ? b * xl->sample : o);
        float *sb = s_out ? s_out + o : NULL, *cb = spike_sum ? spike_sum + o : NULL;
        if (pair)
            mt_row(n, xb, xl, addend, scale, state + o, sb, NULL, &r, 1, first, NULL, b);
        else
            mt_row(n, xb, xl, addend, scale, state + o, sb, cb, &r, 0, first, &ev, b);
    }
}

/* u[j] <- t f(u[j]) for an elementwise f, one vectorized loop per f. */
#define MAP(EXPR) do { _Pragma("omp simd") for (int64_t j = 0; j < len; j++) { const float a = u[j]; \
                        u[j] = (EXPR) * t; } } while (0)
INLINE void map_function(int f, float *u, int64_t len, float t)
{
    switch (f) {
    case F_RELU: MAP(a > 0.0f ? a : 0.0f); break;
    case F_GELU: MAP(a * 0.5f * (1.0f + erff(a * (float)M_SQRT1_2))); break;
    case F_GELU_TANH:
        MAP(0.5f * a * (1.0f + tanhf((float)(M_2_SQRTPI * M_SQRT1_2) * (a + 0.044715f * a * a * a)))); break;
    case F_SILU: MAP(a / (1.0f + expf(-a))); break;
    case F_SIGMOID: MAP(1.0f / (1.0f + expf(-a))); break;
    default: MAP(a * fminf(fmaxf(a + 3.0f, 0.0f), 6.0f) / 6.0f); break;      /* F_HARDSWISH */
    }
}

/* Where an ECM's step reads and writes.  Its input sum S_t is S_{t-1} + x (sum != NULL,
 * kept in sum) or scale_t * x (sum == NULL: x is the raw product A_t B_t of the product
 * ECM before it, whose running output is the sum).  It computes new = t f(S_t / t), then
 * either emits the increment new - out_sum into out (mt == NULL; out_sum keeps new), or
 * hands new to the MT neuron after it (mt != NULL: spikes = fire(new - C) into out, where
 * out is not NULL,
 * C (spike_sum) += spikes; where out_sum is given too, it keeps new, and the neuron's
 * update was active where new differs from the last step's: its events go to ev). */
typedef struct {
    const float *x;
    float *sum;
    float scale_t;
    float *out_sum, *out;
    const mt_rule *mt;
    float *spike_sum;
    events ev;              /* with mt and out_sum: the neuron's events (active: new != out_sum) */
    int64_t sample_size;    /* elements per sample (the sample of an element, for ev.counts) */
    const float *addend;    /* NULL, or per element of a sample a value added to x (the bias of the
                             * linear layer before it, which then leaves it out) */
    int32_t first;          /* step 1: sum, out_sum and spike_sum are read as zeros (not zeroed before) */
} ecm_io;

/* u[j] <- S_t / t for the elements base .. base + len - 1, which are elements first .. of their
 * sample (as S_t times 1 / t: a division per element costs more than the rest of an elementwise
 * ECM; the last bit may differ from torch's). */
INLINE void ecm_average(const ecm_io *io, int64_t base, int64_t first, int64_t len, float t, float *u)
{
    const float *x = io->x + base, rt = 1.0f / t;
    if (io->sum == NULL) {
        const float c = io->scale_t;
        #pragma omp simd
        for (int64_t j = 0; j < len; j++)
            u[j] = (x[j] * c) * rt;
        return;
    }
    float *sum = io->sum + base;
    const float *a = io->addend ? io->addend + first : NULL;
    #pragma omp simd
    for (int64_t j = 0; j < len; j++) {
        const float total = (io->first ? 0.0f : sum[j]) + (a ? x[j] + a[j] : x[j]);
        sum[j] = total;
        u[j] = total * rt;
    }
}

/* new (in u) -> the ECM's output at elements base .. base + len - 1, which are elements
 * first .. first + len - 1 of their sample (the thresholds' index). */
INLINE void ecm_emit(const ecm_io *io, int64_t base, int64_t first, int64_t len, const float *u, int shared)
{
    float *out = io->out ? io->out + base : NULL;    /* NULL (with mt): the spikes are not written */
    if (io->mt == NULL) {
        float *out_sum = io->out_sum + base;
        #pragma omp simd
        for (int64_t j = 0; j < len; j++) {
            out[j] = u[j] - (io->first ? 0.0f : out_sum[j]);
            out_sum[j] = u[j];
        }
        return;
    }
    float v[CHUNK], spikes[CHUNK];
    int32_t m[CHUNK];
    int8_t active[CHUNK];
    const int record = io->out_sum != NULL;
    for (int64_t start = 0; start < len; start += CHUNK) {
        const int64_t part = len - start < CHUNK ? len - start : CHUNK;
        float *c = io->spike_sum + base + start, *s = io->out ? out + start : spikes;
        const float *uc = u + start;
        #pragma omp simd
        for (int64_t j = 0; j < part; j++)
            v[j] = uc[j] - (io->first ? 0.0f : c[j]);
        fire(io->mt, v, part, first + start, s, record ? m : NULL);
        #pragma omp simd
        for (int64_t j = 0; j < part; j++)
            c[j] = (io->first ? 0.0f : c[j]) + s[j];
        if (record) {
            float *last = io->out_sum + base + start;
            #pragma omp simd
            for (int64_t j = 0; j < part; j++) {
                active[j] = uc[j] != (io->first ? 0.0f : last[j]);
                last[j] = uc[j];
            }
            put_events(&io->ev, base + start, (base + start) / io->sample_size, part, m, active, io->mt->levels,
                       io->mt->k, shared);
        }
    }
}

/* An elementwise ECM (relu, gelu, silu, ...), optionally fused with its MT neuron. */
void ecm_map(int64_t batch, int64_t n, int f, float t, ecm_io io, int threads)
{
    #pragma omp parallel for num_threads(threads) schedule(dynamic, 4) if (batch * n > 16384)
    for (int64_t b = 0; b < batch; b++) {
        float u[CHUNK];
        for (int64_t start = 0; start < n; start += CHUNK) {
            const int64_t len = n - start < CHUNK ? n - start : CHUNK, base = b * n + start;
            ecm_average(&io, base, start, len, t, u);
            map_function(f, u, len, t);
            ecm_emit(&io, base, start, len, u, 0);
        }
    }
}

/* Softmax along each of the `rows` rows of len values in u: u <- t softmax(u), as torch: exp(u - max),
 * times 1 / sum.  The exponentials of all rows go in one vectorized pass (rows are often shorter
 * than a few vectors, whose remainders would otherwise call the scalar expf). */
INLINE void softmax_rows(float *u, int64_t rows, int64_t len, float t)
{
    for (int64_t r = 0; r < rows; r++) {
        float *row = u + r * len, top = row[0];
        #pragma omp simd reduction(max : top)
        for (int64_t j = 0; j < len; j++)
            top = row[j] > top ? row[j] : top;
        #pragma omp simd
        for (int64_t j = 0; j < len; j++)
            row[j] -= top;
    }
    const int64_t count = rows * len;
    #pragma omp simd
    for (int64_t j = 0; j < count; j++)
        u[j] = expf(u[j]);
    for (int64_t r = 0; r < rows; r++) {
        float *row = u + r * len, z = 0.0f;
        #pragma omp simd reduction(+ : z)
        for (int64_t j = 0; j < len; j++)
            z += row[j];
        const float inv = 1.0f / z;
        #pragma omp simd
        for (int64_t j = 0; j < len; j++)
            row[j] = (row[j] * inv) * t;
    }
}

/* Layer norm along one row of len values in u: u <- t layer_norm(u). */
INLINE void layer_norm_row(float *u, int64_t len, const float *weight, const float *bias, float eps, float t)
{
    double mean = 0.0, var = 0.0;       /* biased variance, as torch */
    #pragma omp simd reduction(+ : mean)
    for (int64_t j = 0; j < len; j++)
        mean += u[j];
    mean /= (double)len;
    #pragma omp simd reduction(+ : var)
    for (int64_t j = 0; j < len; j++)
        var += ((double)u[j] - mean) * ((double)u[j] - mean);
    const float rstd = (float)(1.0 / sqrt(var / (double)len + (double)eps)), mu = (float)mean;
    #pragma omp simd
    for (int64_t j = 0; j < len; j++) {
        float y = (u[j] - mu) * rstd;
        y = weight ? y * weight[j] : y;
        y = bias ? y + bias[j] : y;
        u[j] = y * t;
    }
}

#define GROUP 1024      /* a row ECM's rows go through the MT neuron in groups of about this many values */

/* A row ECM along the last axis (softmax; layer norm with weight and bias, either may be
 * NULL), optionally fused with its MT neuron; `rows` rows of `len` per sample. */
void ecm_rows(int64_t batch, int64_t rows, int64_t len, int f, const float *weight, const float *bias, float eps,
              float t, ecm_io io, int threads)
{
    const int64_t per = len >= GROUP ? 1 : GROUP / len;           /* rows per group, within one sample */
    const int64_t groups = (rows + per - 1) / per;
    #pragma omp parallel num_threads(threads) if (batch * rows * len > 16384)
    {
        float *u = malloc(sizeof(float) * (size_t)(per * len));
        #pragma omp for schedule(dynamic, 8)
        for (int64_t item = 0; item < batch * groups; item++) {
            const int64_t b = item / groups, r0 = (item % groups) * per;
            const int64_t count = (rows - r0 < per ? rows - r0 : per) * len, base = (b * rows + r0) * len;
            ecm_average(&io, base, r0 * len, count, t, u);
            if (f == F_SOFTMAX)
                softmax_rows(u, count / len, len, t);
            else
                for (int64_t j = 0; j < count; j += len)
                    layer_norm_row(u + j, len, weight, bias, eps, t);
            ecm_emit(&io, base, r0 * len, count, u, 1);
        }
        free(u);
    }
}

/* A product ECM's output from the raw product p = A_t B_t: new = p scale_t; out = new - out_sum;
 * out_sum = new (as kernels.product_update); first: step 1, out_sum read as zeros. */
void scaled_increment(int64_t count, const float *p, float scale_t, float *out_sum, float *out, int first,
                      int threads)
{
    #pragma omp parallel for simd num_threads(threads) schedule(static) if (count > 16384)
    for (int64_t i = 0; i < count; i++) {
        const float value = p[i] * scale_t;
        out[i] = value - (first ? 0.0f : out_sum[i]);
        out_sum[i] = value;
    }
}

/* hw_sim's counting of a product ECM's non-zero pairs (hw_sim/counting.py: product_pairs), one
 * sample per iteration.  Operands as multiplied: the increments x [P, N, K] and y [P, K, M], the
 * running sums A_t (as x) and B_t (as y), each with strides (sample, p, row, column) in elements,
 * any layout (transposed views included).  Per p, x's and A_t's non-zero elements are counted
 * per column k (over n), y's and B_t's per row k (over m); where an operand carries spikes of an
 * MT neuron with k > 1 (th_pos not NULL), its elements are also weighed by the levels they carry
 * (the binary digits of round(|v| / th), th_neg below zero).  The sample's three counts go to
 * out[0..2] (strided by out_stride per sample): the spiking form's pairs
 * sum_k cx cy + cx cb' + ca' cy with ca', cb' the previous step's counts of A and B (ca, cb,
 * [samples, P, K], replaced by this step's), the reference's sum_k cx cy + cx cb + ca cy,
 * and the spiking form's pairs with each spike weighed by its levels. */
typedef struct {
    const float *data;
    int64_t ss, sp, sr, sc;             /* strides: sample, p, row, column */
    const float *th_pos, *th_neg;       /* the spikes' thresholds (scalars), or NULL: count 1 per non-zero */
    const int32_t *counted;             /* its counts along k, [samples, P, K], counted already (add_count),
                                           or NULL (read where th_pos is NULL) */
} operand;

INLINE int64_t levels_of(float v, const float *th_pos, const float *th_neg)
{
    const float th = (v < 0.0f && th_neg) ? th_neg[0] : th_pos[0];
    return v == 0.0f ? 0 : __builtin_popcountll((unsigned long long)llrintf(fabsf(v) / th));
}

/* Per index k of the kept axis (columns: along = 0 counts over rows; rows: along = 1 counts over
 * columns) of one [rows, cols] matrix at base: non-zero counts into c, level weights into w (where
 * o->th_pos).  The inner loop runs along the unit stride where there is one; counts are int32
 * (a vector holds twice as many as of int64). */
static void count_matrix(const operand *o, const float *base, int64_t rows, int64_t cols, int along, int32_t *c,
                         int64_t *w)
{
    const int64_t sr = o->sr, sc = o->sc, kept = along ? rows : cols;
    for (int64_t k = 0; k < kept; k++)
        c[k] = 0;
    if (o->th_pos) {
        for (int64_t k = 0; k < kept; k++)
            w[k] = 0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t q = 0; q < cols; q++) {
                const float v = base[r * sr + q * sc];
                const int64_t k = along ? r : q;
                c[k] += v != 0.0f;
                w[k] += levels_of(v, o->th_pos, o->th_neg);
            }
        return;
    }
    /* counting per column over the rows is counting per row of the transpose: one case */
    const int64_t lines = along ? rows : cols, len = along ? cols : rows;
    const int64_t s_line = along ? sr : sc, s_len = along ? sc : sr;
    if (s_line == 1 && s_len != 1) {            /* the lines lie side by side: add across them */
        for (int64_t i = 0; i < len; i++) {
            const float *across = base + i * s_len;
            #pragma omp simd
            for (int64_t l = 0; l < lines; l++)
                c[l] += across[l] != 0.0f;
        }
    } else {                                    /* a reduction along each line */
        for (int64_t l = 0; l < lines; l++) {
            const float *line = base + l * s_line;
            int32_t n = 0;
            #pragma omp simd reduction(+ : n)
            for (int64_t i = 0; i < len; i++)
                n += line[i * s_len] != 0.0f;
            c[l] = n;
        }
    }
}

/* An operand's counts along k at index `at` of its [samples, P, K]: those add_count gave, or
 * counted now into c (with the level weights w, where it has thresholds). */
INLINE const int32_t *operand_counts(const operand *o, const float *base, int64_t rows, int64_t cols, int along,
                                     int64_t at, int32_t *c, int64_t *w)
{
    if (o->counted && !(w && o->th_pos))
        return o->counted + at;
    count_matrix(o, base, rows, cols, along, c, w);
    return c;
}

/* Count mode's update of a product's running operand (runtime/program.py), fused with its
 * counting: sum += x for the operand as multiplied, sum contiguous [samples, P, R, C], x strided
 * as an operand (view of the increment), and the non-zero elements of x and of the new sum per
 * index k of the axis the product keeps (along = 0: columns, counted over rows, as an x of
 * product_counts; along = 1: rows, over columns, as a y) into cx and cs (int32 [samples, P, K]):
 * what product_counts would count from them, read while they are in cache. */
/* One [R, C] matrix of add_count; sc (x's column stride) is 1 where inlined for it: unit-stride
 * loads, not gathers. */
INLINE void add_count_matrix(int64_t R, int64_t C, const float *xm, int64_t sr, const int64_t sc, float *sm,
                             int along, int32_t *nx, int32_t *ns)
{
    const int64_t K = along ? R : C;
    for (int64_t k = 0; k < K; k++)
        nx[k] = ns[k] = 0;
    for (int64_t r = 0; r < R; r++) {
        const float *xr = xm + r * sr;
        float *srow = sm + r * C;
        if (along) {                /* per row: a reduction along it */
            int32_t a = 0, b = 0;
            #pragma omp simd reduction(+ : a, b)
            for (int64_t c = 0; c < C; c++) {
                const float v = xr[c * sc], total = srow[c] + v;
                srow[c] = total;
                a += v != 0.0f;
                b += total != 0.0f;
            }
            nx[r] = a;
            ns[r] = b;
        } else {                    /* per column: added across the rows */
            #pragma omp simd
            for (int64_t c = 0; c < C; c++) {
                const float v = xr[c * sc], total = srow[c] + v;
                srow[c] = total;
                nx[c] += v != 0.0f;
                ns[c] += total != 0.0f;
            }
        }
    }
}

void add_count(int64_t samples, int64_t P, int64_t R, int64_t C, operand x, float *sum, int along, int32_t *cx,
               int32_t *cs, int threads)
{
    const int64_t K = along ? R : C;
    #pragma omp parallel for num_threads(threads) schedule(static) if (samples * P * R * C > 16384)
    for (int64_t sp = 0; sp < samples * P; sp++) {
        const float *xm = x.data + (sp / P) * x.ss + (sp % P) * x.sp;
        if (x.sc == 1)
            add_count_matrix(R, C, xm, x.sr, 1, sum + sp * R * C, along, cx + sp * K, cs + sp * K);
        else
            add_count_matrix(R, C, xm, x.sr, x.sc, sum + sp * R * C, along, cx + sp * K, cs + sp * K);
    }
}

void product_counts(int64_t samples, int64_t P, int64_t N, int64_t K, int64_t M, operand x, operand a, operand y,
                    operand b, int64_t *ca, int64_t *cb, int64_t *out, int64_t out_stride, int threads)
{
    #pragma omp parallel num_threads(threads) if (samples * P * (N + M) * K > 65536)
    {
        int32_t *counts = malloc(sizeof(int32_t) * (size_t)(4 * K));
        int64_t *weights = malloc(sizeof(int64_t) * (size_t)(2 * K));
        int64_t *wx = weights, *wy = wx + K;
        #pragma omp for schedule(static)
        for (int64_t s = 0; s < samples; s++) {
            int64_t full = 0, paper = 0, level = 0;
            for (int64_t p = 0; p < P; p++) {
                int64_t *ca_prev = ca + (s * P + p) * K, *cb_prev = cb + (s * P + p) * K;
                const int64_t at = (s * P + p) * K;
                const int32_t *cx = operand_counts(&x, x.data + s * x.ss + p * x.sp, N, K, 0, at, counts, wx);
                const int32_t *cax = operand_counts(&a, a.data + s * a.ss + p * a.sp, N, K, 0, at, counts + K, NULL);
                const int32_t *cy = operand_counts(&y, y.data + s * y.ss + p * y.sp, K, M, 1, at, counts + 2 * K, wy);
                const int32_t *cby = operand_counts(&b, b.data + s * b.ss + p * b.sp, K, M, 1, at, counts + 3 * K,
                                                    NULL);
                for (int64_t k = 0; k < K; k++) {
                    const int64_t nx = cx[k], ny = cy[k], both = nx * ny;
                    const int64_t lx = x.th_pos ? wx[k] : nx, ly = y.th_pos ? wy[k] : ny;
                    full += both + nx * cb_prev[k] + ca_prev[k] * ny;
                    paper += both + nx * cby[k] + cax[k] * ny;
                    level += lx * ly + lx * cb_prev[k] + ca_prev[k] * ly;
                    ca_prev[k] = cax[k];
                    cb_prev[k] = cby[k];
                }
            }
            out[s * out_stride] = full;
            out[s * out_stride + 1] = paper;
            out[s * out_stride + 2] = level;
        }
        free(counts);
        free(weights);
    }
}
