// qwen-edit's bridge to cuDNN 9: fused attention (SDPA) and 2-D convolution through the graph API of
// NVIDIA's header-only cudnn-frontend (v1 `cudnn_frontend::graph::Graph`).
//
// Built by build.rs with the `cudnn` feature, as one translation unit, with
// NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING: nothing here links libcudnn. `qe_cudnn_load` dlopens it at run
// time and hands the handle to the frontend through `cudnn_frontend::cudnn_dlhandle`, which the frontend
// declares and the application must define (below). If the library is missing, every call returns
// QE_NOT_LOADED and the Rust side falls back to its own kernels.
//
// The C ABI is small: load once, then per operation a `prepare` (build or look up the graph for one shape,
// report its workspace size) and an `execute` (bind the caller's stream, run). Graphs are cached for the
// life of the process, keyed by the bytes of the shape descriptor plus the device; a shape cuDNN cannot run
// is cached too, with its message, so it is not rebuilt. One cuDNN handle per device, made on first use
// with that device's context current (the caller binds it). A mutex per handle makes "set stream +
// execute" atomic; a global mutex guards the caches. No C++ exception crosses the ABI: every entry point
// catches everything and returns a code plus a message.

#include <dlfcn.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <cudnn_frontend.h>

namespace cudnn_frontend {
// The frontend resolves every cuDNN symbol with dlsym on this handle (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING).
void *cudnn_dlhandle = nullptr;
}  // namespace cudnn_frontend

namespace fe = cudnn_frontend;

namespace {

// Return codes (mirrored in src/models/nn/cudnn.rs).
constexpr int QE_OK          = 0;
constexpr int QE_UNSUPPORTED = 1;  // cuDNN has no engine for this graph (or rejects it): fall back
constexpr int QE_ERROR       = 2;  // anything else (bad arguments, a failed launch, ...)
constexpr int QE_NOT_LOADED  = 3;  // libcudnn could not be loaded

// Plans kept at most (oldest dropped first): every new sequence length is a new SDPA shape, and a
// long-running server sees many.
constexpr size_t MAX_PLANS = 256;

// Tensor uids of the graphs below.
constexpr int64_t UID_Q = 1, UID_K = 2, UID_V = 3, UID_O = 4, UID_BIAS = 5;
constexpr int64_t UID_X = 11, UID_W = 12, UID_Y = 13, UID_CB = 14;

}  // namespace

extern "C" {

// Attention `O = softmax(Q·Kᵀ·scale + mask)·V`. Q/O `[b, h, sq, d]`, K/V `[b, h, skv, d]`, strides in
// elements. `mask`: 0 none, 1 causal (top-left: query i sees keys 0..=i), 2 additive key bias: a contiguous
// `[b, skv]` tensor of the io dtype. All fields are 8 bytes so the struct has no padding (it is hashed).
struct QeSdpaDesc {
    int64_t b, h, sq, skv, d;
    int64_t q_stride[4], k_stride[4], v_stride[4], o_stride[4];
    int64_t dtype;  // 0 bf16, 1 f16
    int64_t mask;
    int64_t sm;             // compute capability: major × 10 + minor, e.g. 90
    int64_t heur;           // heuristics mode: 0 A, 1 B
    int64_t max_workspace;  // bytes; plans needing more are skipped
    double scale;
};

// Cross-correlation of NCHW `x [n, c, h, w]` with `w [k, c, r, s]` (contiguous), optional bias `[k]`,
// into contiguous `y [n, k, out_h, out_w]`. Symmetric padding, no dilation, one group.
struct QeConvDesc {
    int64_t n, c, h, w, k, r, s;
    int64_t pad_h, pad_w, stride_h, stride_w, out_h, out_w;
    int64_t dtype;  // 0 bf16, 1 f16, 2 f32
    int64_t has_bias;
    int64_t sm;
    int64_t heur;
    int64_t max_workspace;
};

}  // extern "C"

namespace {

struct Plan {
    std::shared_ptr<fe::graph::Graph> graph;  // null when unsupported
    std::atomic<int64_t> workspace{0};        // while `tune_pending`: the largest of the built plans'
    bool fused_bias = false;                  // conv: the bias add is part of the graph
    int64_t plans_built = 1;                  // conv: candidate plans built for autotuning
    std::atomic<bool> tune_pending{false};    // conv: time the built plans at the first execute
    std::string message;        // why it is unsupported, or which plan was built
};

struct DeviceHandle {
    cudnnHandle_t handle = nullptr;
    std::mutex mu;  // set_stream + execute
};

std::mutex g_load_mu;
int g_load_state = 0;  // 0 not tried, 1 loaded, -1 failed
std::string g_load_error;
int64_t g_version = 0;

std::mutex g_mu;  // guards the maps below
std::unordered_map<int, std::unique_ptr<DeviceHandle>> g_devices;
std::unordered_map<std::string, std::shared_ptr<Plan>> g_plans;
std::deque<std::string> g_plan_order;  // insertion order of g_plans' keys

void
write_err(char *err, size_t n, std::string const &msg) {
    if (err != nullptr && n > 0) {
        std::snprintf(err, n, "%s", msg.c_str());
    }
}

bool
loaded() {
    std::lock_guard<std::mutex> lock(g_load_mu);
    return g_load_state == 1;
}

// The handle of `device`, created on first use (the caller has made that device's context current).
DeviceHandle *
device_handle(int device, std::string &err) {
    // g_mu is held by the caller.
    auto it = g_devices.find(device);
    if (it != g_devices.end()) {
        return it->second.get();
    }
    auto dev          = std::make_unique<DeviceHandle>();
    cudnnStatus_t st  = fe::detail::create_handle(&dev->handle);
    if (st != CUDNN_STATUS_SUCCESS) {
        err = std::string("cudnnCreate failed on device ") + std::to_string(device) + ": " +
              fe::detail::get_error_string(st);
        return nullptr;
    }
    DeviceHandle *raw = dev.get();
    g_devices.emplace(device, std::move(dev));
    return raw;
}

fe::DataType_t
io_type(int64_t dtype) {
    switch (dtype) {
        case 0:
            return fe::DataType_t::BFLOAT16;
        case 1:
            return fe::DataType_t::HALF;
        default:
            return fe::DataType_t::FLOAT;
    }
}

fe::HeurMode_t
heur_mode(int64_t heur) {
    return heur == 1 ? fe::HeurMode_t::B : fe::HeurMode_t::A;
}

std::string
cache_key(char tag, int device, void const *desc, size_t size) {
    std::string key(1, tag);
    key.append(reinterpret_cast<char const *>(&device), sizeof(device));
    key.append(static_cast<char const *>(desc), size);
    return key;
}

// Runs the frontend's build steps; returns "" on success, else the first failure's message.
std::string
finish_graph(fe::graph::Graph &g,
             cudnnHandle_t handle,
             int64_t heur,
             int64_t max_workspace,
             std::vector<fe::NumericalNote_t> const &deny,
             int64_t max_plans = 1,
             int64_t *plans_built = nullptr) {
    auto check = [](fe::error_t e, char const *step) -> std::string {
        return e.is_good() ? std::string() : std::string(step) + ": " + e.get_message();
    };
    std::string m;
    if (!(m = check(g.validate(), "validate")).empty()) return m;
    if (!(m = check(g.build_operation_graph(handle), "build_operation_graph")).empty()) return m;
    if (!(m = check(g.create_execution_plans({heur_mode(heur), fe::HeurMode_t::FALLBACK}), "create_execution_plans"))
             .empty())
        return m;
    if (!deny.empty()) {
        g.deselect_numeric_notes(deny);
    }
    g.deselect_workspace_greater_than(max_workspace);
    if (!(m = check(g.check_support(), "check_support")).empty()) return m;
    if (max_plans <= 1) {
        if (!(m = check(g.build_plans(fe::BuildPlanPolicy_t::HEURISTICS_CHOICE), "build_plans")).empty()) return m;
        if (plans_built != nullptr) *plans_built = 1;
        return m;
    }
    // Several candidates, in heuristic order, for `autotune` to time at the first execute: the heuristics'
    // first choice is not always fast (seen: a 192→96 3×3 conv at 1024² ran 10× slower than torch's).
    int64_t built = 0;
    std::string failures;
    for (int64_t i = 0; i < g.get_execution_plan_count() && built < max_plans; i++) {
        auto st = g.build_plan_at_index(i);
        if (st.is_good()) {
            built++;
        } else {
            failures += "; plan " + std::to_string(i) + ": " + st.get_message();
        }
    }
    if (built == 0) return "build_plan_at_index: no plan built" + failures;
    if (plans_built != nullptr) *plans_built = built;
    return m;
}

// The SDPA graph of `d`, not yet built; `bias_layout` 0: bias dims [b, 1, 1, skv], 1: [b, 1, sq, skv] with
// a zero stride on sq. `impl`: the frontend's choice (AUTO picks its native "unified" SDPA operation on
// recent cuDNN) or COMPOSITE (the classic fused-attention operation graph).
std::shared_ptr<fe::graph::Graph>
define_sdpa(QeSdpaDesc const &d, int bias_layout, fe::AttentionImplementation_t impl) {
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(io_type(d.dtype))
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    g->set_sm_version(static_cast<int32_t>(d.sm));
    auto tensor = [&](char const *name, int64_t uid, int64_t s, int64_t const *stride) {
        return g->tensor(fe::graph::Tensor_attributes()
                             .set_name(name)
                             .set_uid(uid)
                             .set_dim({d.b, d.h, s, d.d})
                             .set_stride({stride[0], stride[1], stride[2], stride[3]})
                             .set_data_type(io_type(d.dtype)));
    };
    auto Q = tensor("Q", UID_Q, d.sq, d.q_stride);
    auto K = tensor("K", UID_K, d.skv, d.k_stride);
    auto V = tensor("V", UID_V, d.skv, d.v_stride);
    auto opts = fe::graph::SDPA_attributes()
                    .set_name("qe_sdpa")
                    .set_generate_stats(false)
                    .set_attn_scale(static_cast<float>(d.scale))
                    .set_implementation(impl);
    if (d.mask == 1) {
        opts.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
    } else if (d.mask == 2) {
        auto attrs = fe::graph::Tensor_attributes().set_name("bias").set_uid(UID_BIAS).set_data_type(io_type(d.dtype));
        if (bias_layout == 0) {
            attrs.set_dim({d.b, 1, 1, d.skv}).set_stride({d.skv, d.skv, d.skv, 1});
        } else {
            attrs.set_dim({d.b, 1, d.sq, d.skv}).set_stride({d.skv, d.skv, 0, 1});
        }
        opts.set_bias(g->tensor(attrs));
    }
    auto outs = g->sdpa(Q, K, V, opts);
    outs[0]
        ->set_output(true)
        .set_uid(UID_O)
        .set_dim({d.b, d.h, d.sq, d.d})
        .set_stride({d.o_stride[0], d.o_stride[1], d.o_stride[2], d.o_stride[3]})
        .set_data_type(io_type(d.dtype));
    return g;
}

// The built SDPA graph of `d`: the frontend's own choice of implementation first, then the composite one.
// `why` collects the failures; on success `used` names the implementation.
std::shared_ptr<fe::graph::Graph>
sdpa_graph(QeSdpaDesc const &d, cudnnHandle_t handle, int bias_layout, std::string &why, std::string &used) {
    why.clear();
    for (auto impl : {fe::AttentionImplementation_t::AUTO, fe::AttentionImplementation_t::COMPOSITE}) {
        char const *name = impl == fe::AttentionImplementation_t::AUTO ? "auto" : "composite";
        auto g           = define_sdpa(d, bias_layout, impl);
        std::string m    = finish_graph(*g, handle, d.heur, d.max_workspace, {});
        if (m.empty()) {
            used = name;
            return g;
        }
        why += std::string(why.empty() ? "" : "; ") + name + ": " + m;
    }
    return nullptr;
}

// The conv (+ bias when `fuse_bias`) graph of `d`, not yet built.
std::shared_ptr<fe::graph::Graph>
define_conv(QeConvDesc const &d, bool fuse_bias) {
    auto const io = io_type(d.dtype);
    auto g        = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(io)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    g->set_sm_version(static_cast<int32_t>(d.sm));
    auto X = g->tensor(fe::graph::Tensor_attributes()
                           .set_name("X")
                           .set_uid(UID_X)
                           .set_dim({d.n, d.c, d.h, d.w})
                           .set_stride({d.c * d.h * d.w, d.h * d.w, d.w, 1})
                           .set_data_type(io));
    auto W = g->tensor(fe::graph::Tensor_attributes()
                           .set_name("W")
                           .set_uid(UID_W)
                           .set_dim({d.k, d.c, d.r, d.s})
                           .set_stride({d.c * d.r * d.s, d.r * d.s, d.s, 1})
                           .set_data_type(io));
    auto conv = fe::graph::Conv_fprop_attributes()
                    .set_name("qe_conv")
                    .set_padding({d.pad_h, d.pad_w})
                    .set_stride({d.stride_h, d.stride_w})
                    .set_dilation({1, 1});
    conv.set_compute_data_type(fe::DataType_t::FLOAT);
    auto Y                               = g->conv_fprop(X, W, conv);
    std::vector<int64_t> const y_dim     = {d.n, d.k, d.out_h, d.out_w};
    std::vector<int64_t> const y_stride  = {d.k * d.out_h * d.out_w, d.out_h * d.out_w, d.out_w, 1};
    if (fuse_bias) {
        auto B = g->tensor(fe::graph::Tensor_attributes()
                               .set_name("bias")
                               .set_uid(UID_CB)
                               .set_dim({1, d.k, 1, 1})
                               .set_stride({d.k, 1, 1, 1})
                               .set_data_type(io));
        Y->set_dim(y_dim).set_stride(y_stride).set_data_type(fe::DataType_t::FLOAT);
        auto add = fe::graph::Pointwise_attributes().set_name("qe_bias").set_mode(fe::PointwiseMode_t::ADD);
        add.set_compute_data_type(fe::DataType_t::FLOAT);
        Y = g->pointwise(Y, B, add);
    }
    Y->set_output(true).set_uid(UID_Y).set_dim(y_dim).set_stride(y_stride).set_data_type(io);
    return g;
}

// How many candidate plans a conv builds and times at its first execute (`QWEN_EDIT_CUDNN_CONV_PLANS`,
// default 4; 1 takes the heuristics' first choice untimed).
int64_t
conv_autotune_plans() {
    static int64_t const n = [] {
        char const *v = std::getenv("QWEN_EDIT_CUDNN_CONV_PLANS");
        long const parsed = v != nullptr ? std::strtol(v, nullptr, 10) : 4;
        return static_cast<int64_t>(parsed < 1 ? 1 : (parsed > 16 ? 16 : parsed));
    }();
    return n;
}

// Engines a conv of dtype code `dtype` must not use: f32 in and out keeps the math f32 (no TF32 or
// down-converted inputs); half types keep f32 accumulation. Never nondeterministic ones: the same seed
// must give the same image.
std::vector<fe::NumericalNote_t>
conv_denied_notes(int64_t dtype) {
    if (dtype == 2) {
        return {fe::NumericalNote_t::TENSOR_CORE,
                fe::NumericalNote_t::DOWN_CONVERT_INPUTS,
                fe::NumericalNote_t::NONDETERMINISTIC};
    }
    return {fe::NumericalNote_t::REDUCED_PRECISION_REDUCTION, fe::NumericalNote_t::NONDETERMINISTIC};
}

// The built conv graph of `d`, or null with the reason in `why`.
std::shared_ptr<fe::graph::Graph>
conv_graph(QeConvDesc const &d, cudnnHandle_t handle, bool fuse_bias, std::string &why, int64_t &built) {
    auto g = define_conv(d, fuse_bias);
    why    = finish_graph(*g, handle, d.heur, d.max_workspace, conv_denied_notes(d.dtype), conv_autotune_plans(), &built);
    return why.empty() ? g : nullptr;
}

bool
sdpa_desc_ok(QeSdpaDesc const &d, std::string &why) {
    if (d.b <= 0 || d.h <= 0 || d.sq <= 0 || d.skv <= 0 || d.d <= 0) {
        why = "empty or negative dimension";
    } else if (d.dtype != 0 && d.dtype != 1) {
        why = "SDPA needs bf16 or f16";
    } else if (d.mask < 0 || d.mask > 2) {
        why = "unknown mask kind";
    } else if (d.mask == 1 && d.sq != d.skv) {
        why = "causal attention needs sq == skv";
    } else if (!(d.scale > 0.0)) {
        why = "scale must be positive";
    } else if (d.max_workspace < 0) {
        why = "negative workspace limit";
    }
    return why.empty();
}

bool
conv_desc_ok(QeConvDesc const &d, std::string &why) {
    if (d.n <= 0 || d.c <= 0 || d.h <= 0 || d.w <= 0 || d.k <= 0 || d.r <= 0 || d.s <= 0) {
        why = "empty or negative dimension";
    } else if (d.pad_h < 0 || d.pad_w < 0 || d.stride_h <= 0 || d.stride_w <= 0) {
        why = "bad padding or stride";
    } else if (d.dtype < 0 || d.dtype > 2) {
        why = "conv needs bf16, f16 or f32";
    } else if (d.out_h != (d.h + 2 * d.pad_h - d.r) / d.stride_h + 1 ||
               d.out_w != (d.w + 2 * d.pad_w - d.s) / d.stride_w + 1 || d.out_h <= 0 || d.out_w <= 0) {
        why = "output size does not match the input, kernel, padding and stride";
    } else if (d.max_workspace < 0) {
        why = "negative workspace limit";
    }
    return why.empty();
}

// Looks up or builds the plan for `key` with `build`; returns the plan (null only on a hard error).
template <typename Build>
std::shared_ptr<Plan>
plan_for(int device, std::string const &key, Build build, int &code, std::string &err, bool &built) {
    std::lock_guard<std::mutex> lock(g_mu);
    built   = false;
    auto it = g_plans.find(key);
    if (it != g_plans.end()) {
        code = it->second->graph ? QE_OK : QE_UNSUPPORTED;
        err  = it->second->message;
        return it->second;
    }
    DeviceHandle *dev = device_handle(device, err);
    if (dev == nullptr) {
        code = QE_ERROR;
        return nullptr;
    }
    auto plan = std::make_shared<Plan>();
    build(dev->handle, *plan);
    if (plan->graph) {
        int64_t ws = 0;
        fe::error_t st{fe::error_code_t::OK, ""};
        if (plan->tune_pending) {
            ws = plan->graph->get_autotune_workspace_size();
        } else {
            st = plan->graph->get_workspace_size(ws);
        }
        if (st.is_bad() || ws < 0) {
            plan->graph   = nullptr;
            plan->message = "get_workspace_size: " + st.get_message();
        } else {
            plan->workspace = ws;
            std::string name;
            if (plan->graph->get_plan_name(name).is_good()) {
                plan->message += ", engine " + name;
            }
        }
    }
    g_plans.emplace(key, plan);
    g_plan_order.push_back(key);
    while (g_plan_order.size() > MAX_PLANS) {
        // A plan still executing elsewhere stays alive through its shared_ptr.
        g_plans.erase(g_plan_order.front());
        g_plan_order.pop_front();
    }
    built = true;
    code  = plan->graph ? QE_OK : QE_UNSUPPORTED;
    err  = plan->message;
    return plan;
}

// The cached SDPA plan for `desc` (built on first use, then `built` is set). `code`: QE_OK (`why` describes
// the plan), QE_UNSUPPORTED (`why` says why), or an error.
std::shared_ptr<Plan>
sdpa_plan(int device, QeSdpaDesc const *desc, int &code, std::string &why, bool &built) {
    if (!loaded()) {
        code = QE_NOT_LOADED;
        why  = "cuDNN is not loaded";
        return nullptr;
    }
    if (desc == nullptr || !sdpa_desc_ok(*desc, why)) {
        code = QE_ERROR;
        why  = "SDPA: " + (why.empty() ? std::string("null descriptor") : why);
        return nullptr;
    }
    QeSdpaDesc const d = *desc;
    auto build         = [&d](cudnnHandle_t h, Plan &p) {
        std::string first, used;
        p.graph   = sdpa_graph(d, h, 0, first, used);
        p.message = used + " implementation";
        if (!p.graph && d.mask == 2) {
            std::string second;
            p.graph   = sdpa_graph(d, h, 1, second, used);
            p.message = used + " implementation, bias [b, 1, sq, skv] (" + first + ")";
            first += "; with a [b, 1, sq, skv] bias: " + second;
        }
        if (!p.graph) p.message = first;
    };
    return plan_for(device, cache_key('a', device, &d, sizeof d), build, code, why, built);
}

// The cached conv plan for `desc`: conv + bias fused when cuDNN can, else the conv alone.
std::shared_ptr<Plan>
conv_plan(int device, QeConvDesc const *desc, int &code, std::string &why, bool &built) {
    if (!loaded()) {
        code = QE_NOT_LOADED;
        why  = "cuDNN is not loaded";
        return nullptr;
    }
    if (desc == nullptr || !conv_desc_ok(*desc, why)) {
        code = QE_ERROR;
        why  = "conv: " + (why.empty() ? std::string("null descriptor") : why);
        return nullptr;
    }
    QeConvDesc const d = *desc;
    auto build         = [&d](cudnnHandle_t h, Plan &p) {
        std::string fused_why;
        if (d.has_bias != 0) {
            p.graph      = conv_graph(d, h, true, fused_why, p.plans_built);
            p.fused_bias = p.graph != nullptr;
            p.message    = "conv + bias in one graph";
        }
        if (!p.graph) {
            std::string plain_why;
            p.graph   = conv_graph(d, h, false, plain_why, p.plans_built);
            p.message = d.has_bias != 0 ? "conv alone, bias added after (" + fused_why + ")" : "conv";
            if (!p.graph) p.message = plain_why;
        }
        p.tune_pending = p.graph != nullptr && p.plans_built > 1;
    };
    return plan_for(device, cache_key('c', device, &d, sizeof d), build, code, why, built);
}

int
execute(int device, void *stream, Plan &plan, std::unordered_map<int64_t, void *> &pack, void *workspace,
        int64_t workspace_size, std::string &err) {
    if (workspace_size < plan.workspace || (plan.workspace > 0 && workspace == nullptr)) {
        err = "workspace of " + std::to_string(workspace_size) + " bytes, the plan needs " +
              std::to_string(plan.workspace.load());
        return QE_ERROR;
    }
    DeviceHandle *dev = nullptr;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        auto it = g_devices.find(device);
        if (it != g_devices.end()) {
            dev = it->second.get();
        }
    }
    if (dev == nullptr) {
        err = "no cuDNN handle for device " + std::to_string(device) + " (prepare first)";
        return QE_ERROR;
    }
    std::lock_guard<std::mutex> lock(dev->mu);
    cudnnStatus_t st = fe::detail::set_stream(dev->handle, static_cast<cudaStream_t>(stream));
    if (st != CUDNN_STATUS_SUCCESS) {
        err = std::string("cudnnSetStream: ") + fe::detail::get_error_string(st);
        return QE_ERROR;
    }
    if (plan.tune_pending) {
        // Times every built plan on these very buffers (the output is overwritten below) and keeps the
        // fastest; on failure the heuristics' choice stays selected.
        auto tuned = plan.graph->autotune(dev->handle, pack, workspace);
        plan.tune_pending = false;
        int64_t ws        = 0;
        if (tuned.is_good() && plan.graph->get_workspace_size(ws).is_good()) {
            plan.workspace = ws;
            std::string name;
            if (plan.graph->get_plan_name(name).is_good()) {
                std::lock_guard<std::mutex> guard(g_mu);  // `message` is read under g_mu
                plan.message += ", autotuned over " + std::to_string(plan.plans_built) + " plans: " + name;
            }
        }
    }
    auto status = plan.graph->execute(dev->handle, pack, workspace);
    if (status.is_bad()) {
        err = "execute: " + status.get_message();
        return QE_ERROR;
    }
    return QE_OK;
}

}  // namespace

extern "C" {

// dlopens cuDNN (`path`, or "libcudnn.so.9" when null or empty) once per process. On success writes the
// library's version (e.g. 91300) to `version`. Later calls return the first outcome.
int
qe_cudnn_load(char const *path, int64_t *version, char *err, size_t n) {
    try {
        std::lock_guard<std::mutex> lock(g_load_mu);
        if (g_load_state == 0) {
            char const *name = (path != nullptr && path[0] != '\0') ? path : "libcudnn.so.9";
            dlerror();
            void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
            if (h == nullptr) {
                char const *e = dlerror();
                g_load_error  = std::string("cannot load ") + name + ": " + (e ? e : "unknown error");
                g_load_state  = -1;
            } else {
                fe::cudnn_dlhandle = h;
                int64_t v          = static_cast<int64_t>(fe::detail::get_backend_version());
                if (v < 90000 || v >= 100000) {
                    g_load_error = std::string(name) + " is cuDNN " + std::to_string(v) + "; cuDNN 9 is needed";
                    g_load_state = -1;
                } else {
                    g_version    = v;
                    g_load_state = 1;
                }
            }
        }
        if (g_load_state != 1) {
            write_err(err, n, g_load_error);
            return QE_NOT_LOADED;
        }
        if (version != nullptr) {
            *version = g_version;
        }
        return QE_OK;
    } catch (std::exception const &e) {
        write_err(err, n, std::string("loading cuDNN: ") + e.what());
    } catch (...) {
        write_err(err, n, "loading cuDNN: unknown C++ exception");
    }
    return QE_NOT_LOADED;
}

// Builds (or finds) the SDPA plan for `desc` on `device` and writes its workspace size in bytes; `built` is
// set to 1 when this call built the plan. On QE_OK, `err` describes the plan; otherwise it says why not.
int
qe_sdpa_prepare(int device, QeSdpaDesc const *desc, int64_t *workspace, int32_t *built, char *err, size_t n) {
    try {
        if (workspace == nullptr || built == nullptr) {
            write_err(err, n, "SDPA prepare: null argument");
            return QE_ERROR;
        }
        int code   = QE_ERROR;
        bool fresh = false;
        std::string why;
        auto plan = sdpa_plan(device, desc, code, why, fresh);
        *built    = fresh ? 1 : 0;
        if (plan && code == QE_OK) {
            *workspace = plan->workspace;
        }
        write_err(err, n, why);
        return code;
    } catch (std::exception const &e) {
        write_err(err, n, std::string("SDPA prepare: ") + e.what());
    } catch (...) {
        write_err(err, n, "SDPA prepare: unknown C++ exception");
    }
    return QE_ERROR;
}

// Runs the plan prepared for `desc` on `stream` (a CUstream / cudaStream_t). `bias` is read only for
// mask 2. The workspace must hold at least the prepared size.
int
qe_sdpa_execute(int device,
                void *stream,
                QeSdpaDesc const *desc,
                void const *q,
                void const *k,
                void const *v,
                void const *bias,
                void *o,
                void *workspace,
                int64_t workspace_size,
                char *err,
                size_t n) {
    try {
        std::string why;
        if (desc == nullptr || q == nullptr || k == nullptr || v == nullptr || o == nullptr ||
            (desc->mask == 2 && bias == nullptr)) {
            write_err(err, n, "SDPA execute: null argument");
            return QE_ERROR;
        }
        int code   = QE_ERROR;
        bool fresh = false;
        auto plan  = sdpa_plan(device, desc, code, why, fresh);
        if (!plan || code != QE_OK) {
            write_err(err, n, why);
            return code;
        }
        std::unordered_map<int64_t, void *> pack = {{UID_Q, const_cast<void *>(q)},
                                                    {UID_K, const_cast<void *>(k)},
                                                    {UID_V, const_cast<void *>(v)},
                                                    {UID_O, o}};
        if (desc->mask == 2) {
            pack[UID_BIAS] = const_cast<void *>(bias);
        }
        code = execute(device, stream, *plan, pack, workspace, workspace_size, why);
        write_err(err, n, why);
        return code;
    } catch (std::exception const &e) {
        write_err(err, n, std::string("SDPA execute: ") + e.what());
    } catch (...) {
        write_err(err, n, "SDPA execute: unknown C++ exception");
    }
    return QE_ERROR;
}

// Builds (or finds) the conv plan for `desc`; writes its workspace size and whether the bias add is fused
// (when not, the caller adds the bias itself); `built` and `err` as for qe_sdpa_prepare.
int
qe_conv_prepare(int device,
                QeConvDesc const *desc,
                int64_t *workspace,
                int32_t *fused_bias,
                int32_t *built,
                char *err,
                size_t n) {
    try {
        if (workspace == nullptr || fused_bias == nullptr || built == nullptr) {
            write_err(err, n, "conv prepare: null argument");
            return QE_ERROR;
        }
        int code   = QE_ERROR;
        bool fresh = false;
        std::string why;
        auto plan = conv_plan(device, desc, code, why, fresh);
        *built    = fresh ? 1 : 0;
        if (plan && code == QE_OK) {
            *workspace  = plan->workspace;
            *fused_bias = plan->fused_bias ? 1 : 0;
        }
        write_err(err, n, why);
        return code;
    } catch (std::exception const &e) {
        write_err(err, n, std::string("conv prepare: ") + e.what());
    } catch (...) {
        write_err(err, n, "conv prepare: unknown C++ exception");
    }
    return QE_ERROR;
}

// Runs the conv plan for `desc`. `bias` is read only when the prepared plan fused it.
int
qe_conv_execute(int device,
                void *stream,
                QeConvDesc const *desc,
                void const *x,
                void const *w,
                void const *bias,
                void *y,
                void *workspace,
                int64_t workspace_size,
                char *err,
                size_t n) {
    try {
        std::string why;
        if (desc == nullptr || x == nullptr || w == nullptr || y == nullptr) {
            write_err(err, n, "conv execute: null argument");
            return QE_ERROR;
        }
        int code   = QE_ERROR;
        bool fresh = false;
        auto plan  = conv_plan(device, desc, code, why, fresh);
        if (!plan || code != QE_OK) {
            write_err(err, n, why);
            return code;
        }
        if (plan->fused_bias && bias == nullptr) {
            write_err(err, n, "conv execute: the plan adds a bias but none was given");
            return QE_ERROR;
        }
        std::unordered_map<int64_t, void *> pack = {
            {UID_X, const_cast<void *>(x)}, {UID_W, const_cast<void *>(w)}, {UID_Y, y}};
        if (plan->fused_bias) {
            pack[UID_CB] = const_cast<void *>(bias);
        }
        code = execute(device, stream, *plan, pack, workspace, workspace_size, why);
        write_err(err, n, why);
        return code;
    } catch (std::exception const &e) {
        write_err(err, n, std::string("conv execute: ") + e.what());
    } catch (...) {
        write_err(err, n, "conv execute: unknown C++ exception");
    }
    return QE_ERROR;
}

}  // extern "C"
