// ise's CPU kernels: paged decode attention and the fused element-wise steps of a decoder layer.
//
// Why by hand: on a 2-core CPU a decode step of a small model is a few hundred tiny operations,
// and each stock torch op pays dispatch, allocation and an OpenMP wake-up, then streams its
// operands through memory once more. Fusing the element-wise work between the matrix
// multiplications (residual add + RMSNorm, SiLU-and-multiply, rotary embedding + KV-cache write)
// turns about a dozen of those ops per layer into three, and reading the paged cache in place
// avoids gathering every request's context at every layer.
//
// All math is in float32; tensors of other floating types are converted on load and store.
// Layouts: caches [num_slots, KVH, D] flat over positions (slot = block * block_size + offset);
// block_tables [S, M] int32; q rows [T, H, D] with any row stride; out [T, H * D].

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Eight floats, one AVX2 register; GCC and Clang lower these vector types to whatever SIMD the
// target has, so the kernels stay portable C++ while their inner loops are explicitly vectorized.
typedef float vec8 __attribute__((vector_size(32), aligned(4)));
constexpr int64_t kLane = 8;

inline vec8 load8(const float* p) { return *reinterpret_cast<const vec8*>(p); }
inline void store8(float* p, vec8 v) { *reinterpret_cast<vec8*>(p) = v; }
inline float sum8(vec8 v) {
    float s = 0.0f;
    for (int i = 0; i < kLane; ++i) s += v[i];
    return s;
}

// Hardware prefetchers follow the stream of rows within a cache block but lose it at each jump to
// the next block; asking for the row a few positions ahead hides that wait. Measured on the EPYC
// with blocks scattered over the cache: 20% faster decode attention.
constexpr int64_t kPrefetchAhead = 4;

inline void prefetch(const void* start, int64_t bytes) {
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(start) + b);
}

// Rows handed to one thread at least: below this much work, waking the second thread costs more.
int64_t grain_rows(int64_t width) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1)); }

template <typename scalar_t>
inline void load_floats(const scalar_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

template <typename scalar_t>
inline void store_floats(const float* src, scalar_t* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
}

// Scores of one position for the `group` query heads that share its key row (head_dim a multiple of 8).
inline void group_scores(const float* q, const float* k, int64_t group, int64_t head_dim, float* out, int64_t stride) {
    for (int64_t h = 0; h < group; ++h) {
        const float* qh = q + h * head_dim;
        vec8 a = {}, b = {};
        int64_t d = 0;
        for (; d + 2 * kLane <= head_dim; d += 2 * kLane) {
            a += load8(qh + d) * load8(k + d);
            b += load8(qh + d + kLane) * load8(k + d + kLane);
        }
        for (; d < head_dim; d += kLane) a += load8(qh + d) * load8(k + d);
        out[h * stride] = sum8(a + b);
    }
}

template <typename scalar_t>
void attend(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
            const int32_t* block_tables, int64_t max_blocks, const int32_t* seq_index, const int32_t* ctx_len,
            int64_t block_size, float scale, torch::Tensor& out) {
    const int64_t tokens = q.size(0), heads = q.size(1), head_dim = q.size(2), kv_heads = k_cache.size(1);
    const int64_t group = heads / kv_heads, width = kv_heads * head_dim, q_stride = q.stride(0);
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k_cache.data_ptr<scalar_t>();
    const scalar_t* vp = v_cache.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    int64_t longest = 0;
    for (int64_t t = 0; t < tokens; ++t) longest = std::max<int64_t>(longest, ctx_len[t]);
    // One work item per query token, all its heads together: a position's keys for every head
    // are one contiguous row, so each cache line is read once.
    at::parallel_for(0, tokens, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> qf(heads * head_dim), acc(heads * head_dim), row(width), scores(heads * longest);
        std::vector<int64_t> slots(longest + kPrefetchAhead);
        const int64_t row_bytes = width * static_cast<int64_t>(sizeof(scalar_t));
        for (int64_t t = begin; t < end; ++t) {
            const int32_t* table = block_tables + static_cast<int64_t>(seq_index[t]) * max_blocks;
            const int64_t n = ctx_len[t];
            for (int64_t j = 0; j < n; ++j) slots[j] = static_cast<int64_t>(table[j / block_size]) * block_size + j % block_size;
            std::fill(slots.begin() + n, slots.begin() + n + kPrefetchAhead, slots[n - 1]);
            load_floats(qp + t * q_stride, qf.data(), heads * head_dim);
            for (float& x : qf) x *= scale;
            // Keys, then values, each row read once; the scores of the whole context fit in a
            // small buffer, so the softmax needs no running rescaling.
            for (int64_t j = 0; j < n; ++j) {
                prefetch(kp + slots[j + kPrefetchAhead] * width, row_bytes);
                const float* k = reinterpret_cast<const float*>(kp + slots[j] * width);
                if constexpr (!std::is_same_v<scalar_t, float>) {
                    load_floats(kp + slots[j] * width, row.data(), width);
                    k = row.data();
                }
                for (int64_t g = 0; g < kv_heads; ++g)
                    group_scores(qf.data() + g * group * head_dim, k + g * head_dim, group, head_dim,
                                 scores.data() + g * group * n + j, n);
            }
            for (int64_t h = 0; h < heads; ++h) {
                float* s = scores.data() + h * n;
                const float top = *std::max_element(s, s + n);
                float sum = 0.0f;
                for (int64_t j = 0; j < n; ++j) {
                    s[j] = std::exp(s[j] - top);
                    sum += s[j];
                }
                const float inv = 1.0f / sum;
                for (int64_t j = 0; j < n; ++j) s[j] *= inv;
            }
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int64_t j = 0; j < n; ++j) {
                prefetch(vp + slots[j + kPrefetchAhead] * width, row_bytes);
                const float* v = reinterpret_cast<const float*>(vp + slots[j] * width);
                if constexpr (!std::is_same_v<scalar_t, float>) {
                    load_floats(vp + slots[j] * width, row.data(), width);
                    v = row.data();
                }
                for (int64_t h = 0; h < heads; ++h) {
                    const vec8 p = vec8{} + scores[h * n + j];
                    const float* vh = v + (h / group) * head_dim;
                    float* a = acc.data() + h * head_dim;
                    for (int64_t d = 0; d < head_dim; d += kLane) store8(a + d, load8(a + d) + p * load8(vh + d));
                }
            }
            store_floats(acc.data(), op + t * heads * head_dim, heads * head_dim);
        }
    });
}

void paged_attention(torch::Tensor out, const torch::Tensor& q, const torch::Tensor& k_cache,
                     const torch::Tensor& v_cache, const torch::Tensor& block_tables, const torch::Tensor& seq_index,
                     const torch::Tensor& ctx_len, int64_t block_size, double scale) {
    TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1 && q.stride(1) == q.size(2), "q: [T, H, D] with dense rows");
    TORCH_CHECK(k_cache.dim() == 3 && k_cache.is_contiguous() && v_cache.sizes() == k_cache.sizes() &&
                    v_cache.is_contiguous(),
                "caches: contiguous [slots, KVH, D]");
    TORCH_CHECK(out.is_contiguous() && out.size(0) == q.size(0) && out.numel() == q.size(0) * q.size(1) * q.size(2),
                "out: contiguous [T, H * D]");
    TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && out.scalar_type() == q.scalar_type(), "one dtype");
    TORCH_CHECK(block_tables.scalar_type() == torch::kInt32 && block_tables.is_contiguous(), "block_tables: int32");
    TORCH_CHECK(seq_index.scalar_type() == torch::kInt32 && ctx_len.scalar_type() == torch::kInt32, "int32 indices");
    TORCH_CHECK(q.size(1) % k_cache.size(1) == 0 && k_cache.size(2) == q.size(2), "head counts or sizes disagree");
    TORCH_CHECK(q.size(2) % kLane == 0, "head_dim must be a multiple of 8");
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_attention", [&] {
        attend<scalar_t>(q, k_cache, v_cache, block_tables.data_ptr<int32_t>(), block_tables.size(1),
                         seq_index.data_ptr<int32_t>(), ctx_len.data_ptr<int32_t>(), block_size,
                         static_cast<float>(scale), out);
    });
}

// With a residual: residual += x, then returns RMSNorm(residual) * weight. Without: RMSNorm(x) * weight.
torch::Tensor rms_norm(const torch::Tensor& x, std::optional<torch::Tensor> residual, const torch::Tensor& weight,
                       double eps) {
    TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && weight.is_contiguous() && weight.size(0) == x.size(1),
                "x: contiguous [T, C]; weight: [C]");
    TORCH_CHECK(!residual || (residual->is_contiguous() && residual->sizes() == x.sizes() &&
                              residual->scalar_type() == x.scalar_type()),
                "residual: like x");
    auto out = torch::empty_like(x);
    const int64_t rows = x.size(0), width = x.size(1);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "rms_norm", [&] {
        const scalar_t* xp = x.data_ptr<scalar_t>();
        scalar_t* rp = residual ? residual->data_ptr<scalar_t>() : nullptr;
        const scalar_t* wp = weight.data_ptr<scalar_t>();
        scalar_t* op = out.data_ptr<scalar_t>();
        at::parallel_for(0, rows, grain_rows(width), [&](int64_t begin, int64_t end) {
            std::vector<float> h(width), w(width);
            load_floats(wp, w.data(), width);
            for (int64_t r = begin; r < end; ++r) {
                load_floats(xp + r * width, h.data(), width);
                if (rp) {
                    scalar_t* res = rp + r * width;
                    for (int64_t c = 0; c < width; ++c) h[c] += static_cast<float>(res[c]);
                    store_floats(h.data(), res, width);
                    // Normalize what was stored, so a lower-precision residual stream rounds once.
                    load_floats(res, h.data(), width);
                }
                float squares = 0.0f;
                for (int64_t c = 0; c < width; ++c) squares += h[c] * h[c];
                const float inv = 1.0f / std::sqrt(squares / static_cast<float>(width) + static_cast<float>(eps));
                scalar_t* dst = op + r * width;
                for (int64_t c = 0; c < width; ++c) dst[c] = static_cast<scalar_t>(h[c] * inv * w[c]);
            }
        });
    });
    return out;
}

// gate_up [T, 2I] (gate first) -> SiLU(gate) * up [T, I].
torch::Tensor silu_mul(const torch::Tensor& gate_up) {
    TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous() && gate_up.size(1) % 2 == 0, "gate_up: [T, 2I]");
    const int64_t rows = gate_up.size(0), inner = gate_up.size(1) / 2;
    auto out = torch::empty({rows, inner}, gate_up.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, gate_up.scalar_type(), "silu_mul", [&] {
        const scalar_t* src = gate_up.data_ptr<scalar_t>();
        scalar_t* dst = out.data_ptr<scalar_t>();
        at::parallel_for(0, rows, grain_rows(2 * inner), [&](int64_t begin, int64_t end) {
            std::vector<float> g(inner), u(inner);
            for (int64_t r = begin; r < end; ++r) {
                load_floats(src + r * 2 * inner, g.data(), inner);
                load_floats(src + r * 2 * inner + inner, u.data(), inner);
                for (int64_t c = 0; c < inner; ++c) g[c] = g[c] / (1.0f + std::exp(-g[c])) * u[c];
                store_floats(g.data(), dst + r * inner, inner);
            }
        });
    });
    return out;
}

// qkv [T, (H + 2 KVH) * D], in place: rotates the query and key heads by the rotary embedding
// (the half-split layout of Llama-family models: element i pairs with i + D/2), then writes each
// token's keys and values into its cache slot. cos and sin: [T, D].
void rotary_cache_write(torch::Tensor qkv, const torch::Tensor& cos, const torch::Tensor& sin, int64_t heads,
                        torch::Tensor k_cache, torch::Tensor v_cache, const torch::Tensor& slots) {
    TORCH_CHECK(qkv.dim() == 2 && qkv.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(),
                "contiguous qkv and caches");
    const int64_t tokens = qkv.size(0), kv_heads = k_cache.size(1), head_dim = k_cache.size(2);
    TORCH_CHECK(qkv.size(1) == (heads + 2 * kv_heads) * head_dim && head_dim % 2 == 0, "qkv width");
    TORCH_CHECK(cos.is_contiguous() && sin.is_contiguous() && cos.size(0) == tokens && cos.size(1) == head_dim &&
                    cos.scalar_type() == torch::kFloat32 && sin.sizes() == cos.sizes() &&
                    sin.scalar_type() == torch::kFloat32,
                "cos, sin: float32 [T, D]");
    TORCH_CHECK(slots.scalar_type() == torch::kInt64 && slots.numel() == tokens, "slots: int64 [T]");
    TORCH_CHECK(k_cache.scalar_type() == qkv.scalar_type() && v_cache.scalar_type() == qkv.scalar_type(), "one dtype");
    const int64_t half = head_dim / 2, width = qkv.size(1), kv_width = kv_heads * head_dim;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv.scalar_type(), "rotary_cache_write", [&] {
        scalar_t* base = qkv.data_ptr<scalar_t>();
        scalar_t* kc = k_cache.data_ptr<scalar_t>();
        scalar_t* vc = v_cache.data_ptr<scalar_t>();
        const float* cp = cos.data_ptr<float>();
        const float* sp = sin.data_ptr<float>();
        const int64_t* slot = slots.data_ptr<int64_t>();
        at::parallel_for(0, tokens, grain_rows(width), [&](int64_t begin, int64_t end) {
            std::vector<float> x(head_dim);
            for (int64_t t = begin; t < end; ++t) {
                scalar_t* row = base + t * width;
                const float* c = cp + t * head_dim;
                const float* s = sp + t * head_dim;
                for (int64_t h = 0; h < heads + kv_heads; ++h) {
                    scalar_t* head = row + h * head_dim;
                    load_floats(head, x.data(), head_dim);
                    for (int64_t i = 0; i < half; ++i) {
                        head[i] = static_cast<scalar_t>(x[i] * c[i] - x[i + half] * s[i]);
                        head[i + half] = static_cast<scalar_t>(x[i + half] * c[i + half] + x[i] * s[i + half]);
                    }
                }
                std::copy(row + heads * head_dim, row + heads * head_dim + kv_width, kc + slot[t] * kv_width);
                std::copy(row + heads * head_dim + kv_width, row + width, vc + slot[t] * kv_width);
            }
        });
    });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    // Each releases the GIL: the event loop keeps streaming while the engine thread is in here.
    auto nogil = py::call_guard<py::gil_scoped_release>();
    m.def("paged_attention", &paged_attention, nogil);
    m.def("rms_norm", &rms_norm, nogil);
    m.def("silu_mul", &silu_mul, nogil);
    m.def("rotary_cache_write", &rotary_cache_write, nogil);
}
