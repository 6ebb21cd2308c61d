// Decode attention straight from the paged KV cache.
//
// Each query token attends to the first ctx_len[t] positions of its sequence, whose keys and
// values live in fixed-size blocks scattered over the cache, found through the sequence's block
// table. Gathering those blocks into a contiguous tensor first (all that stock torch ops can do)
// copies the whole context of every request at every layer of every step, which on a 2-core CPU
// costs more than the attention itself; this kernel reads the blocks where they lie.
//
// Layouts: q [T, H, D]; k_cache, v_cache [num_blocks, block_size, KVH, D]; block_tables [S, M]
// (int32); seq_index, ctx_len [T] (int32); out [T, H, D]. H is a multiple of KVH (grouped-query
// attention): query head i reads KV head i / (H / KVH).

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace {

// A row of keys or values as floats: float32 rows are read in place, others converted into buf.
template <typename scalar_t>
inline const float* as_float(const scalar_t* src, float* buf, int64_t n) {
    if constexpr (std::is_same_v<scalar_t, float>) {
        return src;
    } else {
        for (int64_t d = 0; d < n; ++d) buf[d] = static_cast<float>(src[d]);
        return buf;
    }
}

template <typename scalar_t>
void attend(const scalar_t* q, const scalar_t* k_cache, const scalar_t* v_cache, const int32_t* block_tables,
            const int32_t* seq_index, const int32_t* ctx_len, scalar_t* out, int64_t num_tokens, int64_t heads,
            int64_t kv_heads, int64_t head_dim, int64_t block_size, int64_t max_blocks, float scale) {
    const int64_t group = heads / kv_heads;
    const int64_t width = kv_heads * head_dim;  // one position's keys (or values), all heads together
    int64_t longest = 0;
    for (int64_t t = 0; t < num_tokens; ++t) longest = std::max<int64_t>(longest, ctx_len[t]);
    // One work item per query token, all its heads together: a position's keys for every head
    // are one contiguous row, so each cache line is read once.
    at::parallel_for(0, num_tokens, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> qf(heads * head_dim), acc(heads * head_dim), row(width), scores(heads * longest);
        for (int64_t t = begin; t < end; ++t) {
            const int32_t* table = block_tables + static_cast<int64_t>(seq_index[t]) * max_blocks;
            const int64_t n = ctx_len[t];
            for (int64_t i = 0; i < heads * head_dim; ++i) qf[i] = static_cast<float>(q[t * heads * head_dim + i]) * scale;
            // Two passes over the context, keys then values, each read once; the scores of the
            // whole context fit in a small buffer, so no running rescaling is needed.
            for (int64_t j = 0; j < n; ++j) {
                const int64_t slot = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
                const float* k = as_float(k_cache + slot * width, row.data(), width);
                for (int64_t hq = 0; hq < heads; ++hq) {
                    const float* qh = qf.data() + hq * head_dim;
                    const float* kh = k + (hq / group) * head_dim;
                    float dot = 0.0f;
                    for (int64_t d = 0; d < head_dim; ++d) dot += qh[d] * kh[d];
                    scores[hq * n + j] = dot;
                }
            }
            for (int64_t hq = 0; hq < heads; ++hq) {
                float* sh = scores.data() + hq * n;
                const float top = *std::max_element(sh, sh + n);
                float sum = 0.0f;
                for (int64_t j = 0; j < n; ++j) {
                    sh[j] = std::exp(sh[j] - top);
                    sum += sh[j];
                }
                const float inv = 1.0f / sum;
                for (int64_t j = 0; j < n; ++j) sh[j] *= inv;
            }
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int64_t j = 0; j < n; ++j) {
                const int64_t slot = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
                const float* v = as_float(v_cache + slot * width, row.data(), width);
                for (int64_t hq = 0; hq < heads; ++hq) {
                    const float p = scores[hq * n + j];
                    const float* vh = v + (hq / group) * head_dim;
                    float* ah = acc.data() + hq * head_dim;
                    for (int64_t d = 0; d < head_dim; ++d) ah[d] += p * vh[d];
                }
            }
            scalar_t* dst = out + t * heads * head_dim;
            for (int64_t i = 0; i < heads * head_dim; ++i) dst[i] = static_cast<scalar_t>(acc[i]);
        }
    });
}

torch::Tensor paged_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                              const torch::Tensor& block_tables, const torch::Tensor& seq_index,
                              const torch::Tensor& ctx_len, double scale) {
    TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 4 && v_cache.sizes() == k_cache.sizes(), "bad shapes");
    TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(), "need contiguous inputs");
    TORCH_CHECK(q.scalar_type() == k_cache.scalar_type(), "q and the cache must share a dtype");
    TORCH_CHECK(block_tables.scalar_type() == torch::kInt32 && block_tables.is_contiguous(), "block_tables: int32");
    TORCH_CHECK(seq_index.scalar_type() == torch::kInt32 && ctx_len.scalar_type() == torch::kInt32, "int32 indices");
    const int64_t heads = q.size(1), kv_heads = k_cache.size(2), head_dim = q.size(2);
    TORCH_CHECK(heads % kv_heads == 0 && k_cache.size(3) == head_dim, "head counts or sizes disagree");
    auto out = torch::empty_like(q);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_attention", [&] {
        attend<scalar_t>(q.data_ptr<scalar_t>(), k_cache.data_ptr<scalar_t>(), v_cache.data_ptr<scalar_t>(),
                         block_tables.data_ptr<int32_t>(), seq_index.data_ptr<int32_t>(), ctx_len.data_ptr<int32_t>(),
                         out.data_ptr<scalar_t>(), q.size(0), heads, kv_heads, head_dim, k_cache.size(1),
                         block_tables.size(1), static_cast<float>(scale));
    });
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    // Released GIL: the event loop keeps streaming while the engine thread is in here.
    m.def("paged_attention", &paged_attention, py::call_guard<py::gil_scoped_release>());
}
