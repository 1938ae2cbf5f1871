/* The detailed step schedule of the mesh model (schedule.py describes the model), and
 * SANA-FE's simple model beside it, for a batch of sample-steps in parallel.
 *
 * It reproduces tests/reference.py's Python StepSchedule bit for bit: every time is added
 * up in the same order, and the queue of messages ready to leave
 * is a binary heap with heapq's push and pop (the same sift steps, comparing departure
 * times with < only), so that messages leaving at the same time are taken in the same
 * order.  Compile without floating-point contraction (ecmt/runtime/cbuild.py does).
 *
 * Routes are X then Y over the system's tile mesh, found here from the cores' positions:
 * no table per (source, destination) pair, which ViT-B's mapping on hundreds of chips
 * could not hold; the load they carry is laid out so that each route is three contiguous
 * pieces of memory. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* What does not change from sample to sample: built once per placement. */
typedef struct {
    int64_t cores, phases;
    const int64_t *run_start;       /* [cores + 1]: each core's runs of elements, in mapping order */
    const int32_t *run_group;       /* per run: its group */
    const int64_t *run_first;       /* per run: its first element (the run's are consecutive) */
    const int64_t *run_length;      /* per run: its elements */
    const int32_t *phase_of_core;   /* [cores]: 0 .. phases - 1 (-1: no neurons) */
    const int32_t *channels;        /* per group: neurons per element */
    const int32_t *mask_width;      /* per group: bytes of one fired mask (1, 2, 4 or 8) */
    const int64_t *elements;        /* per group: elements (the row length of its masks) */
    const int64_t *const *dest_start;   /* per group: [elements + 1], each element's destinations */
    const int32_t *const *dest_core;    /* per group: per destination, the core (ascending per element) */
    const int32_t *const *dest_synapses; /* per group: per destination, its synapses there */
    const int32_t *x, *y;           /* [cores]: the core's tile on the system's tile mesh */
    const int32_t *chip;            /* [cores] */
    const int32_t *crossings;       /* [chips x chips]: chip-to-chip links between two chips */
    int64_t chips, mesh_width, mesh_height;     /* the router grid's columns and rows */
} layout;

/* The timing constants of one run of the schedule. */
typedef struct {
    const double *processing;       /* [most synapses + 1]: message-in + synapses x synaptic event */
    double t_idle, t_update, t_fire, t_out;     /* soma times: access; + update; + spike out */
    double t_hop_x, t_hop_y, t_link;
    double buffer;                  /* link buffer (messages per router input) */
    int32_t loaded;                 /* 0: no network load (every trip takes its hop delays) */
} timing;

/* A message in a core's send queue: the time to generate it since the core's previous one,
 * its destination core (-1: the send-free slot at the queue's end) and synapses there. */
typedef struct { double gen; int32_t dst, synapses; } message_t;
/* A core whose next message is ready to leave at `sent`. */
typedef struct { double sent; int64_t core; } ready_t;
/* A message in flight (numbered in the order sent) from core src, taken in by its destination
 * at `taken` (its share of the load and its processing follow from src, the destination and
 * its synapses). */
typedef struct { double taken; int64_t seq; int32_t src, synapses; } flight_t;
/* The messages in flight to one destination, in the order sent: a growable FIFO. */
typedef struct { flight_t *item; int64_t head, tail, cap; } inbox_t;
/* The first message in flight to one destination.  Per destination, messages are taken in
 * in the order they were sent (each waits for the one before), so the earliest in flight
 * overall is the earliest of these heads: the same order, by (taken, number), as one heap
 * of every message in flight, with a heap as small as the cores.  16 bytes: `key` is the
 * number above the destination's DST_BITS bits (schedule.py refuses 2^24 cores or more; a
 * run numbers fewer than 2^40 messages), which orders as the number alone. */
typedef struct { double taken; uint64_t key; } head_t;
#define DST_BITS 24

static inline int ready_less(const ready_t *a, const ready_t *b) { return a->sent < b->sent; }
static inline int head_less(const head_t *a, const head_t *b) {
    return (a->taken < b->taken) | ((a->taken == b->taken) & (a->key < b->key));
}

/* heapq's _siftdown, _siftup, heappush and heappop, step for step. */
#define HEAP(NAME, T, LESS)                                                              \
    static void NAME##_siftdown(T *h, int64_t start, int64_t pos) {                      \
        T item = h[pos];                                                                 \
        while (pos > start) {                                                            \
            int64_t parent = (pos - 1) >> 1;                                             \
            if (LESS(&item, &h[parent])) { h[pos] = h[parent]; pos = parent; continue; } \
            break;                                                                       \
        }                                                                                \
        h[pos] = item;                                                                   \
    }                                                                                    \
    static void NAME##_siftup(T *h, int64_t end, int64_t pos) {                          \
        int64_t start = pos, child = 2 * pos + 1;                                        \
        T item = h[pos];                                                                 \
        while (child < end) {                                                            \
            int64_t right = child + 1;                                                   \
            child += (right < end) & !LESS(&h[child], &h[right]);  /* h[end]: a spare */ \
            h[pos] = h[child];                                                           \
            pos = child;                                                                 \
            child = 2 * pos + 1;                                                         \
        }                                                                                \
        h[pos] = item;                                                                   \
        NAME##_siftdown(h, start, pos);                                                  \
    }                                                                                    \
    static void NAME##_push(T *h, int64_t *n, T item) {                                  \
        h[*n] = item;                                                                    \
        NAME##_siftdown(h, 0, (*n)++);                                                   \
    }                                                                                    \
    static T NAME##_pop(T *h, int64_t *n) {                                              \
        T last = h[--*n];                                                                \
        if (*n > 0) {                                                                    \
            T top = h[0];                                                                \
            h[0] = last;                                                                 \
            NAME##_siftup(h, *n, 0);                                                     \
            return top;                                                                  \
        }                                                                                \
        return last;                                                                     \
    }
HEAP(ready, ready_t, ready_less)
HEAP(head, head_t, head_less)

/* One thread's working memory, grown as needed. */
typedef struct {
    int64_t size, cap;              /* the sample's send queues, all cores one after another */
    message_t *queue;
    int64_t *q_start, *q_end;       /* [cores] */
    int64_t *next_at;               /* [cores]: each core's next message in a run */
    ready_t *ready;                 /* [cores + 1]: 3 entries into ready_at, so that siblings share a cache line */
    ready_t *ready_at;              /* aligned to 64 bytes */
    head_t *heads;                  /* [cores]: 3 heads into heads_at, so that siblings share a cache line */
    head_t *heads_at;               /* aligned to 64 bytes */
    inbox_t *inbox;                 /* [cores] */
    double *free_at, *load;         /* [cores], [inputs]: zero at a run's start */
    double *gen, *proc;             /* [cores]: the simple model's serial work per core */
} scratch;

static int grow(void **p, int64_t n, size_t item) {
    void *q = realloc(*p, (size_t)n * item);
    if (q == NULL) return -1;
    *p = q;
    return 0;
}

static int append(scratch *s, double gen, int32_t dst, int32_t synapses) {
    if (s->size == s->cap) {
        int64_t cap = s->cap ? 2 * s->cap : 1024;
        if (grow((void **)&s->queue, cap, sizeof(message_t))) return -1;
        s->cap = cap;
    }
    s->queue[s->size++] = (message_t){gen, dst, synapses};
    return 0;
}

static inline int64_t mask_at(const void *row, int32_t width, int64_t e) {
    switch (width) {
    case 1: return ((const uint8_t *)row)[e];
    case 2: return ((const int16_t *)row)[e];
    case 4: return ((const int32_t *)row)[e];
    default: return ((const int64_t *)row)[e];
    }
}

/* The soma time of idle, updating and firing neurons, from their counts (the simple model's
 * serial work of a core). */
static inline double soma(const timing *K, int64_t idle, int64_t updates, int64_t fires) {
    return (double)idle * K->t_idle + (double)updates * K->t_update + (double)fires * K->t_fire;
}

/* Each core's send queue for sample-step n: its neurons in mapping order, adding up their
 * soma times one by one as SANA-FE does (so that the departure times, and the order of
 * messages that leave at the same time, are SANA-FE's); a neuron that fires sends one
 * message per destination core, the first carrying the time added up since the core's
 * previous message plus a message-out time, each further one a message-out time.  Also
 * each core's serial work for the simple model: gen (soma and message-out times) and proc
 * (its incoming messages' processing). */
static int build_queues(const layout *L, const timing *K, scratch *s, int64_t n, const void *const *fired,
                        const uint8_t *const *updated) {
    s->size = 0;
    memset(s->proc, 0, L->cores * sizeof(double));
    for (int64_t core = 0; core < L->cores; core++) {
        double acc = 0.0;
        int64_t idle = 0, updates = 0, fires = 0, messages = 0;
        s->q_start[core] = s->size;
        for (int64_t r = L->run_start[core]; r < L->run_start[core + 1]; r++) {
            int32_t g = L->run_group[r], channels = L->channels[g], width = L->mask_width[g];
            int64_t first = L->run_first[r], end = first + L->run_length[r];
            const void *masks = (const char *)fired[g] + (size_t)(n * L->elements[g]) * width;
            const uint8_t *upd = updated[g] + n * L->elements[g];
            const int64_t *start = L->dest_start[g];
            for (int64_t e = first; e < end; e++) {
                int64_t mask = mask_at(masks, width, e);
                if (mask == 0) {                            /* the common case: nothing fired */
                    int u = upd[e] != 0;
                    acc += u ? K->t_update : K->t_idle;
                    for (int32_t j = 1; j < channels; j++) acc += K->t_idle;
                    updates += u;
                    idle += channels - u;
                    continue;
                }
                for (int32_t j = 0; j < channels; j++) {
                    if ((mask >> j) & 1) {
                        acc += K->t_fire;
                        fires++;
                        if (start == NULL) continue;
                        for (int64_t k = start[e]; k < start[e + 1]; k++) {
                            int32_t dst = L->dest_core[g][k], syn = L->dest_synapses[g][k];
                            if (append(s, acc + K->t_out, dst, syn)) return -1;
                            s->proc[dst] += K->processing[syn];
                            acc = 0.0;
                            messages++;
                        }
                    } else if (j == 0 && upd[e]) {
                        acc += K->t_update;
                        updates++;
                    } else {
                        acc += K->t_idle;
                        idle++;
                    }
                }
            }
        }
        if (acc != 0.0 && append(s, acc, -1, 0))
            return -1;
        s->q_end[core] = s->size;
        s->gen[core] = soma(K, idle, updates, fires) + (double)messages * K->t_out;
    }
    return 0;
}

/* The hop delays of the route src -> dst (X then Y, each chip boundary one link). */
static inline double trip_delay(const layout *L, const timing *K, int32_t src, int32_t dst) {
    double d = 0.0 + (double)abs(L->x[dst] - L->x[src]) * K->t_hop_x + (double)abs(L->y[dst] - L->y[src]) * K->t_hop_y;
    if (K->t_link != 0.0)
        d += (double)L->crossings[L->chip[src] * L->chips + L->chip[dst]] * K->t_link;
    return d;
}

/* The network's load, one value per router input, laid out so that every route is three
 * contiguous pieces: the sending core's port of its first router (one per core, numbered by
 * core), then the routers along X on the source's row, then along Y on the destination's
 * column.  A router's input facing where the message came from is one of four: moving
 * east, west (rows: [2][height][width], x contiguous) or north, south (columns:
 * [2][width][height], y contiguous).  A route's pieces as (first input, length). */
/* Router inputs in all: each core's port, and four per router. */
static inline int64_t inputs(const layout *L) { return L->cores + 4 * L->mesh_width * L->mesh_height; }

typedef struct { int64_t port, x_at, x_len, y_at, y_len; } route_t;

static inline route_t route_of(const layout *L, int32_t src, int32_t dst) {
    int64_t W = L->mesh_width, H = L->mesh_height;
    int64_t x0 = L->x[src], y0 = L->y[src], x1 = L->x[dst], y1 = L->y[dst];
    route_t r = {src, 0, 0, 0, 0};
    int64_t rows = L->cores, cols = L->cores + 2 * W * H;
    if (x1 > x0) { r.x_at = rows + (0 * H + y0) * W + x0 + 1; r.x_len = x1 - x0; }
    else if (x1 < x0) { r.x_at = rows + (1 * H + y0) * W + x1; r.x_len = x0 - x1; }
    if (y1 > y0) { r.y_at = cols + (0 * W + x1) * H + y0 + 1; r.y_len = y1 - y0; }
    else if (y1 < y0) { r.y_at = cols + (1 * W + x1) * H + y1; r.y_len = y0 - y1; }
    return r;
}

static inline void add_to(double *a, int64_t n, double v) {
    for (int64_t i = 0; i < n; i++) a[i] += v;
}

/* The sum of a[0..n) in four interleaved lanes, combined as (l0 + l1) + (l2 + l3), then
 * the rest in order: a fixed order (tests/reference.py adds the same way) that vectorizes;
 * and v added to each a[i] after it is read, in the same pass. */
static inline double lane_sum_add(double *a, int64_t n, double v) {
    double l[4] = {0.0, 0.0, 0.0, 0.0};
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) {
            l[k] += a[i + k];
            a[i + k] += v;
        }
    double sum = (l[0] + l[1]) + (l[2] + l[3]);
    for (; i < n; i++) {
        sum += a[i];
        a[i] += v;
    }
    return sum;
}

/* A message's share of the load on each input of its route: 1 / (links + 1). */
static inline double share_of(route_t r) { return 1.0 / (double)(2 + r.x_len + r.y_len); }

/* The load along a route (its port, plus its X piece, plus its Y piece), and then v added
 * to each of its inputs. */
static inline double load_and_add(double *load, route_t r, double v) {
    double rho = load[r.port];
    load[r.port] += v;
    rho += lane_sum_add(load + r.x_at, r.x_len, v);
    rho += lane_sum_add(load + r.y_at, r.y_len, v);
    return rho;
}

static inline void load_route(double *load, route_t r, double v) {
    load[r.port] += v;
    add_to(load + r.x_at, r.x_len, v);
    add_to(load + r.y_at, r.y_len, v);
}

/* The time from the step's start to its last event, for the queues of the cores in phase
 * `phase` (-1: every core). */
static int run(const layout *L, const timing *K, scratch *s, int32_t phase, double *span) {
    int64_t n_ready = 0, n_heads = 0, n_flight = 0, seq = 0;
    double sum_processing = 0.0, last = 0.0;
    memset(s->free_at, 0, L->cores * sizeof(double));
    if (K->loaded) memset(s->load, 0, inputs(L) * sizeof(double));
    for (int64_t core = 0; core < L->cores; core++) {
        s->inbox[core].head = s->inbox[core].tail = 0;
        s->next_at[core] = s->q_start[core];
        if ((phase < 0 || L->phase_of_core[core] == phase) && s->q_start[core] < s->q_end[core])
            ready_push(s->ready, &n_ready, (ready_t){s->queue[s->q_start[core]].gen, core});
    }
    while (n_ready) {
        ready_t msg = ready_pop(s->ready, &n_ready);
        double sent = msg.sent;
        if (sent > last) last = sent;
        while (n_heads && s->heads[0].taken <= sent) {         /* taken in by now: off the network */
            head_t *h = &s->heads[0];
            int32_t to = (int32_t)(h->key & (((uint64_t)1 << DST_BITS) - 1));
            inbox_t *in_box = &s->inbox[to];
            const flight_t *f = &in_box->item[in_box->head++];
            route_t r = route_of(L, f->src, to);
            load_route(s->load, r, -share_of(r));
            n_flight--;
            sum_processing = n_flight ? sum_processing - K->processing[f->synapses] : 0.0;
            if (in_box->head < in_box->tail) {      /* the destination's next message takes its place */
                const flight_t *next = &in_box->item[in_box->head];
                h->taken = next->taken;
                h->key = (uint64_t)next->seq << DST_BITS | (uint64_t)to;
                if (in_box->head + 1 < in_box->tail)      /* read when this head is taken off */
                    __builtin_prefetch(next + 1);
                head_siftup(s->heads, n_heads, 0);
            } else {
                in_box->head = in_box->tail = 0;
                head_pop(s->heads, &n_heads);
            }
        }
        const message_t *m = &s->queue[s->next_at[msg.core]++];
        int32_t dst = m->dst, src = (int32_t)msg.core;
        if (dst >= 0) {
            double processing = K->processing[m->synapses], trip = trip_delay(L, K, src, dst);
            if (K->loaded) {
                /* rho: the load along the route before this message; then its share is added */
                route_t r = route_of(L, src, dst);
                int64_t links = 1 + r.x_len + r.y_len;
                double rho = load_and_add(s->load, r, share_of(r));
                double mu = n_flight ? sum_processing / (double)n_flight : 0.0;
                double excess = rho - (double)links * K->buffer;
                if (excess > 0) sent += excess * mu;
                double crowd = rho * mu / (double)links;
                if (crowd > trip) trip = crowd;
                double arrive = sent + trip, f = s->free_at[dst], done = f + processing;
                if (arrive + processing > done) done = arrive + processing;
                s->free_at[dst] = done;
                if (done > last) last = done;
                inbox_t *in_box = &s->inbox[dst];
                if (in_box->tail == in_box->cap) {
                    if (2 * in_box->head >= in_box->cap && in_box->head > 0) {     /* room at the front */
                        memmove(in_box->item, in_box->item + in_box->head, (in_box->tail - in_box->head) * sizeof(flight_t));
                        in_box->tail -= in_box->head;
                        in_box->head = 0;
                    } else {
                        int64_t cap = in_box->cap ? 2 * in_box->cap : 16;
                        if (grow((void **)&in_box->item, cap, sizeof(flight_t))) return -1;
                        in_box->cap = cap;
                    }
                }
                double taken = arrive > f ? arrive : f;
                if (in_box->head == in_box->tail)
                    head_push(s->heads, &n_heads, (head_t){taken, (uint64_t)seq << DST_BITS | (uint64_t)dst});
                in_box->item[in_box->tail++] = (flight_t){taken, seq, src, m->synapses};
                seq++;
                n_flight++;
                sum_processing += processing;
            } else {
                double arrive = sent + trip, f = s->free_at[dst], done = f + processing;
                if (arrive + processing > done) done = arrive + processing;
                s->free_at[dst] = done;
                if (done > last) last = done;
            }
        }
        if (s->next_at[msg.core] < s->q_end[msg.core]) {
            msg.sent = sent + s->queue[s->next_at[msg.core]].gen;
            ready_push(s->ready, &n_ready, msg);
            if (msg.sent > last) last = msg.sent;
        }
    }
    *span = last;
    return 0;
}

/* Per sample-step n of the batch (its rows in fired / updated):
 *   whole[n]: the detailed span over every core (only where whole_too: SANA-FE's single-step
 *     view, else 0), parts[n, p]: the span of phase p's cores alone (the whole span where
 *     the phase holds every core with neurons, 0 where it holds none);
 *   simple_whole[n], simple_parts[n, p]: SANA-FE's simple model, the largest serial work of
 *     one core (gen or proc) over every core and over each phase's cores.
 * fired[g]: group g's [N, elements] fired channels (bit j: channel j, `width` bytes each);
 * updated[g]: [N, elements] whether channel 0 updates without firing.
 * Returns 0, or -1 when memory ran out. */
int schedule_batch(const layout *L, const timing *K, int64_t batch, const void *const *fired,
                   const uint8_t *const *updated, double *whole, double *parts, double *simple_whole,
                   double *simple_parts, int whole_too, int threads) {
    int failed = 0;
    int64_t used = 0, *in_phase = calloc(L->phases ? L->phases : 1, sizeof(int64_t));
    if (in_phase == NULL) return -1;
    for (int64_t core = 0; core < L->cores; core++)
        if (L->phase_of_core[core] >= 0) {
            used++;
            in_phase[L->phase_of_core[core]]++;
        }
    #pragma omp parallel num_threads(threads)
    {
        scratch s = {0};
        int64_t C = L->cores;
        s.q_start = malloc(C * sizeof(int64_t));
        s.q_end = malloc(C * sizeof(int64_t));
        s.next_at = malloc(C * sizeof(int64_t));
        /* + 1: read, not used, past a heap's end */
        if (posix_memalign((void **)&s.ready_at, 64, (C + 4) * sizeof(ready_t))) s.ready_at = NULL;
        s.ready = s.ready_at ? s.ready_at + 3 : NULL;
        if (posix_memalign((void **)&s.heads_at, 64, (C + 4) * sizeof(head_t))) s.heads_at = NULL;
        s.heads = s.heads_at ? s.heads_at + 3 : NULL;
        if (s.ready_at) memset(s.ready_at, 0, (C + 4) * sizeof(ready_t));
        if (s.heads_at) memset(s.heads_at, 0, (C + 4) * sizeof(head_t));
        s.inbox = calloc(C, sizeof(inbox_t));
        s.free_at = malloc(C * sizeof(double));
        s.gen = malloc(C * sizeof(double));
        s.proc = malloc(C * sizeof(double));
        s.load = malloc((K->loaded ? inputs(L) : 1) * sizeof(double));
        int ok = C == 0 || (s.q_start && s.q_end && s.next_at && s.ready && s.heads && s.inbox && s.free_at
                            && s.gen && s.proc && s.load);
        #pragma omp for schedule(dynamic)
        for (int64_t n = 0; n < batch; n++) {
            if (!ok || failed) continue;
            if (build_queues(L, K, &s, n, fired, updated) || (whole_too && run(L, K, &s, -1, &whole[n]))) {
                ok = 0;
                continue;
            }
            double top = 0.0;
            for (int32_t p = 0; p < L->phases; p++) simple_parts[n * L->phases + p] = 0.0;
            for (int64_t core = 0; core < C; core++) {
                double w = s.gen[core] > s.proc[core] ? s.gen[core] : s.proc[core];
                int32_t p = L->phase_of_core[core];
                if (w > top) top = w;
                if (p >= 0 && w > simple_parts[n * L->phases + p]) simple_parts[n * L->phases + p] = w;
            }
            simple_whole[n] = top;
            for (int32_t p = 0; p < L->phases; p++) {
                double *part = &parts[n * L->phases + p];
                if (in_phase[p] == 0) *part = 0.0;
                else if (in_phase[p] == used && whole_too) *part = whole[n];
                else if (run(L, K, &s, p, part)) ok = 0;
            }
        }
        if (!ok) {
            #pragma omp atomic write
            failed = 1;
        }
        free(s.queue); free(s.q_start); free(s.q_end); free(s.next_at); free(s.ready_at); free(s.heads_at);
        for (int64_t core = 0; s.inbox && core < C; core++) free(s.inbox[core].item);
        free(s.inbox);
        free(s.free_at); free(s.load); free(s.gen); free(s.proc);
    }
    free(in_phase);
    return failed ? -1 : 0;
}
