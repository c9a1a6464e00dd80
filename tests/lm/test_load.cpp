// common/lm/load.hpp: Hugging Face safetensors, GGUF (F32, F16, BF16, Q8_0)
// and llama2.c checkpoints of the same weights load to the same model and
// give the same statistics; inconsistent checkpoints are refused.
#include <doctest/doctest.h>

#include <loftq/detail/half.hpp>
#include <loftq/io/gguf.hpp>
#include <loftq/io/safetensors.hpp>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "common/llama2c.hpp"
#include "common/lm/calibrate.hpp"
#include "common/lm/load.hpp"
#include "common/lm/save.hpp"
#include "calibrate_support.hpp"

namespace {

using calibrate_test::check_identical;
using calibrate_test::exists;
using calibrate_test::random_sequences;
using calibrate_test::rel_diff;
using calibrate_test::shared;
using calibrate_test::TempDir;
using lm::Mat;

// --- Writers of the same weights in the other formats.

enum class GgufWeights { f32, f16, bf16, q8_0 };

// Q8_0 blocks of a row-major tensor (ggml's quantize_row_q8_0_ref: d =
// amax / 127 stored as fp16, codes round(x / d)).
std::vector<unsigned char> q8_0_bytes(const lm::RowMat& M) {
  std::vector<unsigned char> out;
  const float* x = M.data();
  for (Eigen::Index b = 0; b < M.size() / 32; ++b) {
    float amax = 0;
    for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
    const float d = amax / 127, id = d != 0 ? 1 / d : 0;
    const std::uint16_t h = loftq::detail::float_to_half(d);
    out.push_back(static_cast<unsigned char>(h & 0xff));
    out.push_back(static_cast<unsigned char>(h >> 8));
    for (int j = 0; j < 32; ++j)
      out.push_back(static_cast<unsigned char>(static_cast<std::int8_t>(std::lround(x[b * 32 + j] * id))));
  }
  return out;
}

lm::RowMat q8_0_dequant(const lm::RowMat& M) {
  const std::vector<unsigned char> b = q8_0_bytes(M);
  lm::RowMat out(M.rows(), M.cols());
  for (Eigen::Index k = 0; k < M.size(); ++k) {
    const unsigned char* blk = b.data() + (k / 32) * 34;
    const float d = loftq::detail::half_to_float(static_cast<std::uint16_t>(blk[0] | (blk[1] << 8)));
    out.data()[k] = static_cast<float>(static_cast<std::int8_t>(blk[2 + k % 32])) * d;
  }
  return out;
}

// A llama-architecture GGUF of `w` (q and k in the interleaved order, as
// llama.cpp stores them). Matrices whose rows are whole 32-blocks take the
// requested type (Q8_0), everything else F32/F16.
void write_gguf(const lm::Weights<float>& w, const std::string& path, GgufWeights type) {
  using loftq::io::GgmlType;
  const lm::Config& c = w.config;
  std::vector<loftq::io::GgufKV> kvs = {
      loftq::io::gguf_kv_string("general.architecture", "llama"),
      loftq::io::gguf_kv_u32("llama.context_length", static_cast<std::uint32_t>(c.seq_len)),
      loftq::io::gguf_kv_u32("llama.embedding_length", static_cast<std::uint32_t>(c.dim)),
      loftq::io::gguf_kv_u32("llama.feed_forward_length", static_cast<std::uint32_t>(c.hidden_dim)),
      loftq::io::gguf_kv_u32("llama.block_count", static_cast<std::uint32_t>(c.n_layers)),
      loftq::io::gguf_kv_u32("llama.attention.head_count", static_cast<std::uint32_t>(c.n_heads)),
      loftq::io::gguf_kv_u32("llama.attention.head_count_kv", static_cast<std::uint32_t>(c.n_kv_heads)),
      loftq::io::gguf_kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f),
      loftq::io::gguf_kv_f32("llama.rope.freq_base", 10000.0f),
  };
  std::vector<std::pair<std::string, lm::RowMat>> t;
  t.push_back({"token_embd.weight", w.embedding});
  for (int l = 0; l < c.n_layers; ++l) {
    const auto& lw = w.layers[static_cast<std::size_t>(l)];
    const std::string p = "blk." + std::to_string(l) + ".";
    t.push_back({p + "attn_norm.weight", lm::RowMat(lw.rms_att.transpose())});
    t.push_back({p + "attn_q.weight", lw.W[lm::kQ]});
    t.push_back({p + "attn_k.weight", lw.W[lm::kK]});
    t.push_back({p + "attn_v.weight", lw.W[lm::kV]});
    t.push_back({p + "attn_output.weight", lw.W[lm::kO]});
    t.push_back({p + "ffn_norm.weight", lm::RowMat(lw.rms_ffn.transpose())});
    t.push_back({p + "ffn_gate.weight", lw.W[lm::kGate]});
    t.push_back({p + "ffn_up.weight", lw.W[lm::kUp]});
    t.push_back({p + "ffn_down.weight", lw.W[lm::kDown]});
  }
  t.push_back({"output_norm.weight", lm::RowMat(w.rms_final.transpose())});
  if (!c.shared_classifier) t.push_back({"output.weight", w.classifier});
  std::vector<loftq::io::GgufTensorDecl> decl;
  std::vector<GgmlType> types;
  for (const auto& [name, M] : t) {
    const bool vec = M.rows() == 1;
    GgmlType ty = type == GgufWeights::f16 ? GgmlType::F16 : type == GgufWeights::bf16 ? GgmlType::BF16 : GgmlType::F32;
    if (type == GgufWeights::q8_0 && !vec && M.cols() % 32 == 0) ty = GgmlType::Q8_0;
    types.push_back(ty);
    decl.push_back(
        {name,
         vec ? std::vector<std::uint64_t>{static_cast<std::uint64_t>(M.cols())}
             : std::vector<std::uint64_t>{static_cast<std::uint64_t>(M.cols()), static_cast<std::uint64_t>(M.rows())},
         static_cast<std::uint32_t>(ty)});
  }
  loftq::io::GgufWriter wr(path, kvs, decl);
  for (std::size_t i = 0; i < t.size(); ++i) {
    const lm::RowMat& M = t[i].second;
    std::vector<unsigned char> bytes;
    if (types[i] == GgmlType::Q8_0) {
      bytes = q8_0_bytes(M);
    } else if (types[i] == GgmlType::F16) {
      for (Eigen::Index k = 0; k < M.size(); ++k) {
        const std::uint16_t h = loftq::detail::float_to_half(M.data()[k]);
        bytes.push_back(static_cast<unsigned char>(h & 0xff));
        bytes.push_back(static_cast<unsigned char>(h >> 8));
      }
    } else if (types[i] == GgmlType::BF16) {
      bytes.resize(static_cast<std::size_t>(M.size()) * 2);
      loftq::io::from_float(loftq::io::Dtype::BF16, M.data(), static_cast<std::size_t>(M.size()), bytes.data());
    } else {
      bytes.resize(static_cast<std::size_t>(M.size()) * 4);
      std::memcpy(bytes.data(), M.data(), bytes.size());
    }
    wr.write(t[i].first, bytes.data(), bytes.size());
  }
  wr.commit();
}

// `w` with every tensor rounded through a 16-bit storage type.
lm::Weights<float> rounded(const lm::Weights<float>& w, loftq::io::Dtype d) {
  auto r = [&](auto& M) {
    std::vector<unsigned char> b(static_cast<std::size_t>(M.size()) * 2);
    loftq::io::from_float(d, M.data(), static_cast<std::size_t>(M.size()), b.data());
    loftq::io::to_float(d, b.data(), static_cast<std::size_t>(M.size()), M.data());
  };
  lm::Weights<float> o = w;
  r(o.embedding);
  r(o.rms_final);
  if (!o.config.shared_classifier) r(o.classifier);
  for (auto& lw : o.layers) {
    r(lw.rms_att);
    r(lw.rms_ffn);
    for (auto& M : lw.W) r(M);
  }
  return o;
}

}  // namespace

TEST_CASE("Hugging Face and GGUF checkpoints of the same weights give the same statistics") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  const auto seqs = random_sequences(w.config.vocab_size, {33, 20}, 13);
  lm::CalibrationOptions o;
  o.threads = 2;
  const lm::Calibration ref = lm::collect_statistics(w, seqs, o);
  TempDir dir("formats");

  SUBCASE("Hugging Face, sharded, q/k in transformers' order") {
    lm::write_hf_checkpoint(w, dir.path.string(), loftq::io::Dtype::F32, 2);
    const lm::Weights<float> h = lm::read_model(dir.path.string());
    CHECK(h.config.dim == w.config.dim);
    CHECK(h.config.n_kv_heads == w.config.n_kv_heads);
    CHECK(h.config.seq_len == w.config.seq_len);
    CHECK(h.config.rms_eps == 1e-5);
    CHECK(h.config.shared_classifier == w.config.shared_classifier);
    for (std::size_t l = 0; l < w.layers.size(); ++l)
      for (int k = 0; k < lm::kKinds; ++k) CHECK(h.layers[l].W[k] == w.layers[l].W[k]);
    check_identical(lm::collect_statistics(h, seqs, o), ref);
    // Without the inverse permutation the rotary pairs would be wrong: the
    // permuted q differs from the original.
    CHECK(Mat<float>(lm::hf_permute(w.layers[0].W[lm::kQ], w.config.n_heads)) != w.layers[0].W[lm::kQ]);
  }
  SUBCASE("Hugging Face BF16: the weights rounded to bfloat16") {
    lm::write_hf_checkpoint(w, dir.path.string(), loftq::io::Dtype::BF16, 2);
    const lm::Weights<float> h = lm::read_hf_checkpoint(dir.path.string());
    const lm::Weights<float> r = rounded(w, loftq::io::Dtype::BF16);
    CHECK(h.layers[0].W[lm::kQ] != w.layers[0].W[lm::kQ]);
    check_identical(lm::collect_statistics(h, seqs, o), lm::collect_statistics(r, seqs, o));
  }
  SUBCASE("GGUF BF16 and F16: the weights rounded") {
    write_gguf(w, dir / "bf.gguf", GgufWeights::bf16);
    check_identical(lm::collect_statistics(lm::read_model(dir / "bf.gguf"), seqs, o),
                    lm::collect_statistics(rounded(w, loftq::io::Dtype::BF16), seqs, o));
    write_gguf(w, dir / "f16.gguf", GgufWeights::f16);
    check_identical(lm::collect_statistics(lm::read_model(dir / "f16.gguf"), seqs, o),
                    lm::collect_statistics(rounded(w, loftq::io::Dtype::F16), seqs, o));
  }
  SUBCASE("GGUF F32") {
    write_gguf(w, dir / "m.gguf", GgufWeights::f32);
    const lm::Weights<float> g = lm::read_model(dir / "m.gguf");
    CHECK(g.config.vocab_size == w.config.vocab_size);
    check_identical(lm::collect_statistics(g, seqs, o), ref);
  }
  SUBCASE("GGUF F16") {
    write_gguf(w, dir / "m16.gguf", GgufWeights::f16);
    const lm::Weights<float> g = lm::read_model(dir / "m16.gguf");
    CHECK(g.layers[0].W[lm::kQ] != w.layers[0].W[lm::kQ]);
    const lm::Calibration got = lm::collect_statistics(g, seqs, o);
    for (std::size_t i = 0; i < ref.inputs.size(); ++i)
      CHECK(rel_diff(got.inputs[i].stats.gram(), ref.inputs[i].stats.gram()) < 1e-2);
  }
  SUBCASE("GGUF Q8_0: ggml's dequantization") {
    write_gguf(w, dir / "q8.gguf", GgufWeights::q8_0);
    const lm::Weights<float> g = lm::read_model(dir / "q8.gguf");
    const Mat<float> expect = q8_0_dequant(w.layers[1].W[lm::kGate]);
    CHECK(g.layers[1].W[lm::kGate] == expect);
    CHECK(g.layers[1].W[lm::kGate] != w.layers[1].W[lm::kGate]);
    CHECK(g.layers[1].W[lm::kDown] == w.layers[1].W[lm::kDown]);  // 172 columns: not whole blocks, kept F32
    lm::Weights<float> d = w;
    for (auto& lw : d.layers)
      for (int k = 0; k < lm::kKinds; ++k)
        if (lw.W[k].cols() % 32 == 0) lw.W[k] = q8_0_dequant(lw.W[k]);
    d.embedding = q8_0_dequant(w.embedding);
    check_identical(lm::collect_statistics(g, seqs, o), lm::collect_statistics(d, seqs, o));
  }
}

TEST_CASE("loaders refuse inconsistent checkpoints") {
  REQUIRE_STORIES();
  const lm::Weights<float> w = lm::read_checkpoint(shared("stories260K.bin"));
  TempDir dir("bad");
  lm::write_hf_checkpoint(w, dir.path.string(), loftq::io::Dtype::F32, 2);
  // A config whose hidden size disagrees with the tensors.
  std::string cfg;
  {
    std::ifstream f(dir / "config.json");
    cfg.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  const std::string key = "\"hidden_size\": " + std::to_string(w.config.dim);
  const std::size_t at = cfg.find(key);
  REQUIRE(at != std::string::npos);
  std::ofstream(dir / "config.json") << cfg.substr(0, at) << "\"hidden_size\": " << 2 * w.config.dim
                                     << cfg.substr(at + key.size());
  CHECK_THROWS_AS(lm::read_hf_checkpoint(dir.path.string()), loftq::Error);
  CHECK_THROWS_AS(lm::parse_hf_config("{\"model_type\": \"gpt2\"}", "x"), loftq::Error);
  CHECK_THROWS_AS(lm::parse_hf_config("[1]", "x"), loftq::Error);
  CHECK_THROWS_AS(lm::read_gguf_model(dir / "missing.gguf"), loftq::Error);
}
