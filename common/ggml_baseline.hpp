#pragma once
// What LoftQ's llama.cpp files are set against, made with ggml's own code:
// ggml's quantization of the tensors LoftQ quantized (ggml_quantize_chunk,
// optionally with importance weights), and a plain rank-r adapter of that
// quantization's error (its truncated SVD) in the tool's adapter layout.

#include "common/gguf_layout.hpp"
#include "common/llama_engine.hpp"

#include <Eigen/Core>
#include <Eigen/SVD>
// The adapter's SVD is Eigen's BDCSVD in double, which loftq/svd.hpp declares
// extern in programs that link loftq_instances: instantiated here, it cost a
// unit about 40 s of compiler time.
#include <loftq/svd.hpp>

#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace llama_check {

namespace gl = gguf_layout;

// A tensor's values as ggml dequantizes them (its type traits' to_float).
inline std::vector<float> ggml_values(const Api& api, const gl::File& f, const gl::Tensor& t) {
  if (t.type == gl::F32) return f.values(t);
  const ggml_type_traits* tr = api.ggml_get_type_traits(static_cast<ggml_type>(t.type));
  require(tr != nullptr && tr->to_float != nullptr,
          t.name + ": ggml has no to_float for type " + std::to_string(t.type));
  std::vector<float> out(static_cast<std::size_t>(t.numel));
  tr->to_float(f.at(t), out.data(), static_cast<std::int64_t>(t.numel));
  return out;
}

inline void write_bytes(const std::vector<unsigned char>& bytes, const std::string& out) {
  std::ofstream f(out, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  require(static_cast<bool>(f), out + ": cannot write");
}

// Per-tensor importance weights (one per input column), as llama-quantize passes an imatrix's.
using Importance = std::map<std::string, std::vector<float>>;

// ggml's own quantization of model.gguf's quantized targets: model.gguf with
// each tensor that has an adapter replaced by ggml_quantize_chunk of FP's
// (with its importance weights when `importance` has them).
inline void write_ggml_baseline(const Api& api, const gl::File& fp, const gl::File& model, const gl::File& adapter,
                                const std::string& out, const Importance* importance = nullptr) {
  std::vector<unsigned char> bytes = model.bytes;
  int n = 0;
  for (const gl::Tensor& t : model.tensors) {
    if (!adapter.find(t.name + ".lora_a")) continue;
    const gl::Tensor* src = fp.find(t.name);
    require(src && src->ne == t.ne, t.name + ": not in the fp model with that shape");
    const std::vector<float> w = fp.values(*src);
    const float* imatrix = nullptr;
    if (importance) {
      const auto it = importance->find(t.name);
      require(it != importance->end() && it->second.size() == t.ne[0], t.name + ": no importance weights of its width");
      imatrix = it->second.data();
    }
    const std::size_t written =
        api.ggml_quantize_chunk(static_cast<ggml_type>(t.type), w.data(), bytes.data() + model.data + t.offset, 0,
                                static_cast<std::int64_t>(t.ne[1]), static_cast<std::int64_t>(t.ne[0]), imatrix);
    require(written == t.nbytes, t.name + ": ggml_quantize_chunk wrote " + std::to_string(written) + " bytes");
    ++n;
  }
  require(n > 0, "no quantized target in model.gguf");
  write_bytes(bytes, out);
}

// The adapter's lora_alpha (0: llama.cpp then scales by 1, not alpha / r).
inline float adapter_alpha(const gl::File& adapter) {
  const std::vector<unsigned char>* v = adapter.kv("adapter.lora.alpha");
  float alpha = 0;
  if (v && v->size() == 4) std::memcpy(&alpha, v->data(), 4);
  return alpha;
}

// `adapter` with new factors: for each target, llama.cpp's (alpha / r) *
// lora_b * lora_a is the best rank-r approximation of FP - BASE (BASE as ggml
// dequantizes it); tensor types, shapes and metadata stay the tool's.
inline void write_svd_adapter(const Api& api, const gl::File& fp, const gl::File& base, const gl::File& adapter,
                              const std::string& out) {
  std::vector<unsigned char> bytes = adapter.bytes;
  const float alpha = adapter_alpha(adapter);
  int n = 0;
  for (const gl::Tensor& la : adapter.tensors) {
    const std::string suffix = ".lora_a";
    if (la.name.size() <= suffix.size() || la.name.compare(la.name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string name = la.name.substr(0, la.name.size() - suffix.size());
    const gl::Tensor* lb = adapter.find(name + ".lora_b");
    const gl::Tensor* w = fp.find(name);
    const gl::Tensor* q = base.find(name);
    require(lb && w && q && w->ne == q->ne && la.ne.size() == 2 && lb->ne.size() == 2 && la.ne[0] == w->ne[0] &&
                lb->ne[1] == w->ne[1] && lb->ne[0] == la.ne[1],
            name + ": adapter, fp and base disagree on its shape");
    const Eigen::Index rows = static_cast<Eigen::Index>(w->ne[1]), cols = static_cast<Eigen::Index>(w->ne[0]),
                       r = static_cast<Eigen::Index>(la.ne[1]);
    require(r <= std::min(rows, cols), name + ": rank above the matrix's");
    const std::vector<float> wv = fp.values(*w), qv = ggml_values(api, base, *q);
    using RowMatrixF = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    const Eigen::MatrixXd E =
        (Eigen::Map<const RowMatrixF>(wv.data(), rows, cols) - Eigen::Map<const RowMatrixF>(qv.data(), rows, cols))
            .cast<double>();
    const Eigen::BDCSVD<Eigen::MatrixXd> svd(E, Eigen::ComputeThinU | Eigen::ComputeThinV);
    const Eigen::VectorXd root = svd.singularValues().head(r).cwiseSqrt();
    const double unscale = alpha > 0 ? static_cast<double>(r) / alpha : 1.0;
    const RowMatrixF A = (root.asDiagonal() * svd.matrixV().leftCols(r).transpose()).cast<float>();  // r x cols
    const RowMatrixF B = (unscale * svd.matrixU().leftCols(r) * root.asDiagonal()).cast<float>();    // rows x r
    for (const auto& [t, m] : {std::pair<const gl::Tensor*, const RowMatrixF*>{&la, &A}, {lb, &B}}) {
      require(t->type == gl::F32 || t->type == gl::F16 || t->type == gl::BF16,
              t->name + ": the plain adapter is written in F32, F16 or BF16 only");
      const std::vector<unsigned char> enc =
          gl::Builder::encode_floats(std::vector<float>(m->data(), m->data() + m->size()), t->type);
      require(enc.size() == t->nbytes, t->name + ": encoded size differs");
      std::memcpy(bytes.data() + adapter.data + t->offset, enc.data(), enc.size());
    }
    ++n;
  }
  require(n > 0, "no lora_a tensor in the adapter");
  write_bytes(bytes, out);
}

}  // namespace llama_check
