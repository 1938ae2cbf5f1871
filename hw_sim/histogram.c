/* Histogram of a byte array, in parallel: counts[b] += #{i : code[i] == b}
 * for b < bins.  torch.bincount does the same on one thread, and slowly on
 * long runs of one value (each increment waits for the previous one); here
 * each thread counts 64 Ki-element blocks into four interleaved sub-histograms. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK (1 << 16)   /* < 2^32 / 4 per sub-histogram counter: uint32 cannot overflow */

void histogram_u8(const uint8_t *code, int64_t n, int64_t *counts, int64_t bins, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        uint32_t sub[4][256];
        int64_t total[256] = {0};
        #pragma omp for schedule(static)
        for (int64_t start = 0; start < n; start += BLOCK) {
            int64_t end = start + BLOCK < n ? start + BLOCK : n, i = start;
            memset(sub, 0, sizeof sub);
            for (; i + 4 <= end; i += 4) {
                sub[0][code[i]]++;
                sub[1][code[i + 1]]++;
                sub[2][code[i + 2]]++;
                sub[3][code[i + 3]]++;
            }
            for (; i < end; i++)
                sub[0][code[i]]++;
            for (int b = 0; b < 256; b++)
                total[b] += (int64_t)sub[0][b] + sub[1][b] + sub[2][b] + sub[3][b];
        }
        #pragma omp critical
        for (int64_t b = 0; b < bins; b++)
            counts[b] += total[b];
    }
}

/* The same per row of a [rows, len] byte array: counts[r * bins + b] += #{i : code[r, i] == b};
 * rows in parallel (the per-sample counts of hw_sim's intervals). */
void histogram_rows_u8(const uint8_t *code, int64_t rows, int64_t len, int64_t *counts, int64_t bins,
                       int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; r++) {
        uint32_t sub[4][256];
        int64_t total[256] = {0};
        const uint8_t *row = code + r * len;
        for (int64_t start = 0; start < len; start += BLOCK) {
            int64_t end = start + BLOCK < len ? start + BLOCK : len, i = start;
            memset(sub, 0, sizeof sub);
            for (; i + 4 <= end; i += 4) {
                sub[0][row[i]]++;
                sub[1][row[i + 1]]++;
                sub[2][row[i + 2]]++;
                sub[3][row[i + 3]]++;
            }
            for (; i < end; i++)
                sub[0][row[i]]++;
            for (int b = 0; b < 256; b++)
                total[b] += (int64_t)sub[0][b] + sub[1][b] + sub[2][b] + sub[3][b];
        }
        for (int64_t b = 0; b < bins; b++)
            counts[r * bins + b] += total[b];
    }
}

/* The counts of an MT neuron with spikes_per_step k > 1, from its int16 event codes
 * (kernels.mt_multi_update_coded: sign * m + span, plus 2 span + 1 where the input was
 * non-zero; span = 2^levels - 1, bins = 2 (2 span + 1)), of a [rows, len] array (one row
 * per sample), in one pass: counts[b] += #{codes == b} over all rows, and per row
 * per_row[r, 0..2] += (spikes: m != 0, active updates, levels fired: popcount(|m|)). */
void mt_counts_i16(const int16_t *code, int64_t rows, int64_t len, int64_t span, int64_t *counts,
                   int64_t *per_row, int threads) {
    const int64_t values = 2 * span + 1, bins = 2 * values;
    #pragma omp parallel num_threads(threads)
    {
        int64_t *total = calloc(bins, sizeof *total);
        #pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            const int16_t *row = code + r * len;
            int64_t spikes = 0, active = 0, fired = 0;
            for (int64_t i = 0; i < len; i++) {
                int64_t c = (uint16_t)row[i];
                int64_t on = c >= values, m = c - on * values - span;
                total[c]++;
                active += on;
                spikes += m != 0;
                fired += __builtin_popcountll((uint64_t)(m < 0 ? -m : m));
            }
            per_row[3 * r] += spikes;
            per_row[3 * r + 1] += active;
            per_row[3 * r + 2] += fired;
        }
        #pragma omp critical
        for (int64_t b = 0; b < bins; b++)
            counts[b] += total[b];
        free(total);
    }
}
