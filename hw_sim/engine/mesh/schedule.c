/* The detailed step schedule of the mesh model (hw_sim/schedule.py describes the model),
 * for every sample of a batch, in parallel over samples.
 *
 * It reproduces tests/reference.py's Python StepSchedule bit for bit: every time is added
 * up in the same order, and the queue of messages ready to leave is a binary heap with
 * heapq's push and pop (the same sift steps, comparing departure times with < only), so
 * that messages leaving at the same time are taken in the same order.  Compile without
 * floating-point contraction (hw_sim/native.py does). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* What does not change from sample to sample: built once per placement and timing. */
typedef struct {
    int64_t cores, phases;
    const int64_t *core_start;      /* [cores + 1]: each core's neurons in mapping order, in entry_* */
    const int32_t *entry_group;     /* per entry: its group */
    const int64_t *entry_element;   /* per entry: its element in the group */
    const int32_t *phase_of_core;   /* [cores]: 0 .. phases - 1 */
    const int32_t *channels;        /* per group: neurons per element */
    const int64_t *elements;        /* per group: elements (the row length of its spikes) */
    const int64_t *first_element;   /* per group: its first element in dest_start's numbering */
    const int64_t *dest_start;      /* [all elements + 1]: each element's destinations */
    const int32_t *dest_core;       /* per destination: the core, ascending per element */
    const double *dest_processing;  /* per destination: message-in + synapses x synaptic event */
    const int32_t *dest_route;      /* per destination: its route */
    const double *route_delay;      /* per route: the hop delays */
    const int32_t *route_links;     /* per route: hops + 1 */
    const int64_t *route_start;     /* [routes + 1]: the router inputs it loads, in route_input */
    const int32_t *route_input;
    int64_t inputs;                 /* router inputs in all */
    double t_idle, t_update, t_fire, t_out;
    double buffer;                  /* link buffer (messages per router input) */
    int32_t loaded;                 /* 0: no network load (every trip takes its hop delays) */
} layout;

/* A message in a core's send queue: the time to generate it since the core's previous
 * one, its processing time at the destination, its destination core (-1: the send-free
 * slot at the queue's end) and route. */
typedef struct { double gen, processing; int32_t dst, route; } message_t;
/* A core whose next message is ready to leave at `sent`. */
typedef struct { double sent; int64_t core; } ready_t;
/* A message in flight (numbered in the order sent), taken in by its destination at `taken`. */
typedef struct { double taken, share, processing; int64_t seq; int32_t route; } flight_t;
/* The messages in flight to one destination, in the order sent: a growable FIFO. */
typedef struct { flight_t *item; int64_t head, tail, cap; } inbox_t;
/* The first message in flight to one destination.  Per destination, messages are taken in
 * in the order they were sent (each waits for the one before), so the earliest in flight
 * overall is the earliest of these heads: the same order, by (taken, number), as one heap
 * of every message in flight, with a heap as small as the cores. */
typedef struct { double taken; int64_t seq; int64_t dst; } head_t;

static inline int ready_less(const ready_t *a, const ready_t *b) { return a->sent < b->sent; }
static inline int head_less(const head_t *a, const head_t *b) {
    return (a->taken < b->taken) | ((a->taken == b->taken) & (a->seq < b->seq));
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
    ready_t *ready;                 /* [cores] */
    head_t *heads;                  /* [cores] */
    inbox_t *inbox;                 /* [cores] */
    double *free_at, *load;         /* [cores], [inputs]: zero at a run's start */
} scratch;

static int grow(void **p, int64_t n, size_t item) {
    void *q = realloc(*p, (size_t)n * item);
    if (q == NULL) return -1;
    *p = q;
    return 0;
}

static int append(scratch *s, double gen, int32_t dst, double processing, int32_t route) {
    if (s->size == s->cap) {
        int64_t cap = s->cap ? 2 * s->cap : 1024;
        if (grow((void **)&s->queue, cap, sizeof(message_t))) return -1;
        s->cap = cap;
    }
    s->queue[s->size++] = (message_t){gen, processing, dst, route};
    return 0;
}

/* Each core's send queue for sample b: its neurons in mapping order, adding up their soma
 * times; a neuron that fires sends one message per destination core, the first carrying
 * the time added up since the core's previous message. */
static int build_queues(const layout *L, scratch *s, int64_t b, const int64_t *const *fired,
                        const uint8_t *const *updated) {
    s->size = 0;
    for (int64_t core = 0; core < L->cores; core++) {
        double acc = 0.0;
        s->q_start[core] = s->size;
        for (int64_t i = L->core_start[core]; i < L->core_start[core + 1]; i++) {
            int32_t g = L->entry_group[i];
            int64_t e = L->entry_element[i], row = b * L->elements[g] + e;
            int64_t mask = fired[g][row];
            int32_t channels = L->channels[g];
            for (int32_t j = 0; j < channels; j++) {
                if ((mask >> j) & 1) {
                    acc += L->t_fire;
                    int64_t at = L->first_element[g] + e;
                    for (int64_t k = L->dest_start[at]; k < L->dest_start[at + 1]; k++) {
                        if (append(s, acc + L->t_out, L->dest_core[k], L->dest_processing[k], L->dest_route[k]))
                            return -1;
                        acc = 0.0;
                    }
                } else if (j == 0) {
                    acc += updated[g][row] ? L->t_update : L->t_idle;
                } else {
                    acc += L->t_idle;
                }
            }
        }
        if (acc != 0.0 && append(s, acc, -1, 0.0, -1))
            return -1;
        s->q_end[core] = s->size;
    }
    return 0;
}

/* The time from the step's start to its last event, for the queues of the cores in phase
 * `phase` (-1: every core). */
static int run(const layout *L, scratch *s, int32_t phase, double *span) {
    int64_t n_ready = 0, n_heads = 0, n_flight = 0, seq = 0;
    double sum_processing = 0.0, last = 0.0;
    memset(s->free_at, 0, L->cores * sizeof(double));
    if (L->loaded) memset(s->load, 0, L->inputs * sizeof(double));
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
            inbox_t *in = &s->inbox[h->dst];
            const flight_t *f = &in->item[in->head++];
            for (int64_t k = L->route_start[f->route]; k < L->route_start[f->route + 1]; k++)
                s->load[L->route_input[k]] -= f->share;
            n_flight--;
            sum_processing = n_flight ? sum_processing - f->processing : 0.0;
            if (in->head < in->tail) {      /* the destination's next message takes its place */
                h->taken = in->item[in->head].taken;
                h->seq = in->item[in->head].seq;
                head_siftup(s->heads, n_heads, 0);
            } else {
                in->head = in->tail = 0;
                head_pop(s->heads, &n_heads);
            }
        }
        const message_t *m = &s->queue[s->next_at[msg.core]++];
        int32_t dst = m->dst, route = m->route;
        if (dst >= 0) {
            double processing = m->processing, trip = L->route_delay[route];
            int32_t links = L->route_links[route];
            if (L->loaded) {
                double rho = 0.0;
                for (int64_t k = L->route_start[route]; k < L->route_start[route + 1]; k++)
                    rho += s->load[L->route_input[k]];
                double mu = n_flight ? sum_processing / (double)n_flight : 0.0;
                double excess = rho - (double)links * L->buffer;
                if (excess > 0) sent += excess * mu;
                double crowd = rho * mu / (double)links;
                if (crowd > trip) trip = crowd;
            }
            double arrive = sent + trip, f = s->free_at[dst], done = f + processing;
            if (arrive + processing > done) done = arrive + processing;
            s->free_at[dst] = done;
            if (done > last) last = done;
            if (L->loaded) {
                double share = 1.0 / (double)(links + 1);
                for (int64_t k = L->route_start[route]; k < L->route_start[route + 1]; k++)
                    s->load[L->route_input[k]] += share;
                inbox_t *in = &s->inbox[dst];
                if (in->tail == in->cap) {
                    if (2 * in->head >= in->cap && in->head > 0) {     /* room at the front */
                        memmove(in->item, in->item + in->head, (in->tail - in->head) * sizeof(flight_t));
                        in->tail -= in->head;
                        in->head = 0;
                    } else {
                        int64_t cap = in->cap ? 2 * in->cap : 16;
                        if (grow((void **)&in->item, cap, sizeof(flight_t))) return -1;
                        in->cap = cap;
                    }
                }
                double taken = arrive > f ? arrive : f;
                if (in->head == in->tail)
                    head_push(s->heads, &n_heads, (head_t){taken, seq, dst});
                in->item[in->tail++] = (flight_t){taken, share, processing, seq, route};
                seq++;
                n_flight++;
                sum_processing += processing;
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

/* Per sample b of the batch: whole[b], the span over every core (only where whole_too:
 * SANA-FE's single-step view, else 0), and parts[b, p], the span of phase p's cores alone
 * (the whole span where the phase holds every core with neurons, 0 where it holds none).  fired[g] / updated[g]: group g's [batch, elements]
 * fired channels (bit j: channel j) and whether channel 0 updates without firing.
 * Returns 0, or -1 when memory ran out. */
int schedule_batch(const layout *L, int64_t batch, const int64_t *const *fired, const uint8_t *const *updated,
                   double *whole, double *parts, int whole_too, int threads) {
    int failed = 0;
    int64_t used = 0, *in_phase = calloc(L->phases ? L->phases : 1, sizeof(int64_t));
    if (in_phase == NULL) return -1;
    for (int64_t core = 0; core < L->cores; core++)
        if (L->core_start[core] < L->core_start[core + 1]) {
            used++;
            in_phase[L->phase_of_core[core]]++;
        }
    #pragma omp parallel num_threads(threads)
    {
        scratch s = {0};
        s.q_start = malloc(L->cores * sizeof(int64_t));
        s.q_end = malloc(L->cores * sizeof(int64_t));
        s.next_at = malloc(L->cores * sizeof(int64_t));
        s.ready = calloc(L->cores + 1, sizeof(ready_t));      /* + 1: read, not used, past a heap's end */
        s.heads = calloc(L->cores + 1, sizeof(head_t));
        s.inbox = calloc(L->cores, sizeof(inbox_t));
        s.free_at = malloc(L->cores * sizeof(double));
        s.load = malloc((L->inputs ? L->inputs : 1) * sizeof(double));
        int ok = L->cores == 0 || (s.q_start && s.q_end && s.next_at && s.ready && s.heads && s.inbox && s.free_at && s.load);
        #pragma omp for schedule(dynamic)
        for (int64_t b = 0; b < batch; b++) {
            if (!ok || failed) continue;
            if (build_queues(L, &s, b, fired, updated) || (whole_too && run(L, &s, -1, &whole[b]))) {
                ok = 0;
                continue;
            }
            for (int32_t p = 0; p < L->phases; p++) {
                double *part = &parts[b * L->phases + p];
                if (in_phase[p] == 0) *part = 0.0;
                else if (in_phase[p] == used && whole_too) *part = whole[b];
                else if (run(L, &s, p, part)) ok = 0;
            }
        }
        if (!ok) {
            #pragma omp atomic write
            failed = 1;
        }
        free(s.queue); free(s.q_start); free(s.q_end); free(s.next_at); free(s.ready); free(s.heads);
        for (int64_t core = 0; s.inbox && core < L->cores; core++) free(s.inbox[core].item);
        free(s.inbox);
        free(s.free_at); free(s.load);
    }
    free(in_phase);
    return failed ? -1 : 0;
}
