// The verifiers of `loftq model` outputs in the packed, bnb-nf4 and bit-budget
// forms (usage: modeltool.cpp).
#include "modeltool.hpp"

#include <loftq/io/npy.hpp>
#include <loftq/io/safetensors.hpp>

#include "common/llama2c.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iterator>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <sys/stat.h>

namespace modeltool {
namespace {

// sum over targets of ||W - Q - (alpha / r) lora_B lora_A||^2, from the files.
double total_sq_error(const std::string& input, const std::string& out) {
  st::Checkpoint in(input), base(out);
  st::SafetensorsFile ad(out + "/adapter_model.safetensors");
  const nlohmann::json cfg = read_json(out + "/adapter_config.json");
  const double scaling = cfg.at("lora_alpha").get<double>() / cfg.at("r").get<double>();
  double total = 0;
  for (const auto& kv : in.entries()) {
    const st::TensorInfo& ti = *kv.second.info;
    if (!is_target(kv.first, ti)) continue;
    const std::string path = kv.first.substr(0, kv.first.size() - 7);
    const auto& bo = base.entries().at(kv.first);
    const RowMatrix W = in.file(kv.second.file).read_matrix(ti), Q = base.file(bo.file).read_matrix(*bo.info),
                    LA = ad.read_matrix(ad.at("base_model.model." + path + ".lora_A.weight")),
                    LB = ad.read_matrix(ad.at("base_model.model." + path + ".lora_B.weight"));
    total += (W - Q - static_cast<float>(scaling) * (LB * LA)).cast<double>().squaredNorm();
  }
  return total;
}

std::vector<float> f32_of(const st::SafetensorsFile& f, const std::string& name) {
  const st::TensorInfo& t = f.at(name);
  require(t.dtype == st::Dtype::F32, name + " is not F32");
  std::vector<float> v(t.nbytes() / 4);
  f.read_bytes(t, 0, t.nbytes(), v.data());
  return v;
}

// bitsandbytes' dequantize_4bit of M.weight, with the nested absmax
// recovered as dequantize_blockwise(absmax, state2) + offset; every product
// and sum in fp32, as its kernels compute them.
RowMatrix bnb_decode(const st::SafetensorsFile& f, const std::string& name, std::uint64_t rows, std::uint64_t cols,
                     const std::string& dtype, bool dq) {
  const std::uint64_t n = rows * cols;
  const st::TensorInfo& w = f.at(name);
  require(w.dtype == st::Dtype::U8 && w.shape == std::vector<std::uint64_t>{(n + 1) / 2, 1}, name + ": packed shape");
  const st::TensorInfo& qs = f.at(name + ".quant_state.bitsandbytes__nf4");
  require(qs.dtype == st::Dtype::U8, name + ": quant_state dtype");
  const std::vector<unsigned char> raw = f.read_bytes(qs);
  const nlohmann::json j = nlohmann::json::parse(std::string(raw.begin(), raw.end()));
  require(j.at("quant_type") == "nf4" && j.at("dtype") == dtype &&
              j.at("shape") == nlohmann::json::array({rows, cols}) && j.size() == (dq ? 7u : 4u),
          name + ": quant_state " + j.dump());
  const std::uint64_t bs = j.at("blocksize").get<std::uint64_t>();
  const std::vector<float> qmap = f32_of(f, name + ".quant_map");
  require(qmap.size() == 16 && qmap[0] == -1.0f && qmap[7] == 0.0f && qmap[15] == 1.0f, name + ": quant_map");
  std::vector<float> absmax;
  const st::TensorInfo& am = f.at(name + ".absmax");
  if (dq) {
    require(j.at("nested_blocksize") == 256 && j.at("nested_dtype") == "float32" && am.dtype == st::Dtype::U8,
            name + ": nested quant_state");
    const std::vector<float> nabs = f32_of(f, name + ".nested_absmax"), nmap = f32_of(f, name + ".nested_quant_map");
    require(nmap.size() == 256 && nabs.size() == (am.nbytes() + 255) / 256, name + ": nested tensors");
    const float offset = static_cast<float>(j.at("nested_offset").get<double>());
    const std::vector<unsigned char> codes = f.read_bytes(am);
    for (std::uint64_t b = 0; b < am.nbytes(); ++b) {
      volatile float prod = nmap[codes[b]] * nabs[b / 256];
      absmax.push_back(prod + offset);
    }
  } else {
    require(!f.find(name + ".nested_absmax"), name + ": nested tensors without double quant");
    absmax = f32_of(f, name + ".absmax");
  }
  require(absmax.size() == (n + bs - 1) / bs, name + ": absmax count");
  RowMatrix Q(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols));
  const std::vector<unsigned char> p = f.read_bytes(w);
  for (std::uint64_t e = 0; e < n; ++e) {
    const unsigned c = e % 2 == 0 ? p[e / 2] >> 4 : p[e / 2] & 0xF;
    volatile float v = qmap[c] * absmax[e / bs];
    Q.data()[e] = v;
  }
  return Q;
}

}  // namespace

int cmd_packed(const std::string& out) {
  st::Checkpoint base(out);
  st::SafetensorsFile p(out + "/model.packed.safetensors");
  const auto& md = p.metadata();
  const std::uint64_t bs = std::stoull(md.at("loftq.block_size"));
  const nlohmann::json codebooks = nlohmann::json::parse(md.at("loftq.codebooks"));
  const bool dq = md.count("loftq.double_quant") > 0;
  if (dq) require(md.at("loftq.double_quant_block") == "256", "double-quant block");
  std::set<int> widths;
  std::size_t count = 0;
  for (const st::TensorInfo& t : p.tensors()) {
    const std::string suffix = ".qcodes";
    if (t.name.size() <= suffix.size() || t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const std::string name = t.name.substr(0, t.name.size() - suffix.size());
    const int bits = std::stoi(md.at(name + ".bits"));
    widths.insert(bits);
    const std::vector<float> cb = codebooks.at(std::to_string(bits)).get<std::vector<float>>();
    require(cb.size() == (std::size_t{1} << bits), "codebook size");
    const std::vector<std::uint64_t> shape =
        nlohmann::json::parse(md.at(name + ".shape")).get<std::vector<std::uint64_t>>();
    const auto& e = base.entries().at(name);
    const RowMatrix Q = base.file(e.file).read_matrix(*e.info);
    require(shape.size() == 2 && shape[0] == static_cast<std::uint64_t>(Q.rows()) &&
                shape[1] == static_cast<std::uint64_t>(Q.cols()),
            "packed shape of " + name);
    const std::uint64_t N = shape[0] * shape[1], nb = (N + bs - 1) / bs;
    std::vector<float> scales;
    if (dq) {
      // The layout's formula, written out independently of the library.
      require(!p.find(name + ".qscales"), "fp32 scales stored next to double-quantized ones: " + name);
      const st::TensorInfo& tq = p.at(name + ".qscales_q");
      require(tq.dtype == st::Dtype::U8 && tq.nbytes() == nb, "qscales_q of " + name);
      const std::vector<float> absmax = p.read_float(p.at(name + ".qscales_absmax"));
      const std::vector<float> mean = p.read_float(p.at(name + ".qscales_mean"));
      require(absmax.size() == (nb + 255) / 256 && mean.size() == 1, "double-quant payload sizes of " + name);
      const std::vector<unsigned char> q = p.read_bytes(tq);
      for (std::uint64_t b = 0; b < nb; ++b) {
        require(q[b] >= 1, "double-quant code 0 in " + name);
        scales.push_back(mean[0] + static_cast<float>(static_cast<int>(q[b]) - 128) * (absmax[b / 256] / 127.0f));
      }
    } else {
      scales = p.read_float(p.at(name + ".qscales"));
    }
    const std::vector<unsigned char> codes = p.read_bytes(t);
    require(t.nbytes() == (N * static_cast<std::uint64_t>(bits) + 7) / 8, "code bytes of " + name);
    require(scales.size() == nb, "scale count of " + name);
    for (std::uint64_t i = 0; i < N; ++i) {
      const std::uint64_t bit = i * static_cast<std::uint64_t>(bits);
      unsigned window = codes[bit / 8];
      if (bit / 8 + 1 < t.nbytes()) window |= static_cast<unsigned>(codes[bit / 8 + 1]) << 8;
      const unsigned c = (window >> (bit % 8)) & ((1u << bits) - 1u);
      const float v = cb[c] * scales[i / bs];
      const float q = Q.data()[i];
      // Q is stored in the input's dtype: compare after the same rounding.
      unsigned char buf[8];
      st::from_float(e.info->dtype, &v, 1, buf);
      float vr;
      st::to_float(e.info->dtype, buf, 1, &vr);
      require(vr == q, name + ": packed value " + std::to_string(i) + " decodes to " + std::to_string(vr) +
                           ", Q holds " + std::to_string(q));
    }
    ++count;
  }
  require(count > 0, "no packed tensors");
  // One width: the single-width keys a reader of that layout expects; mixed:
  // "mixed", so that such a reader stops.
  if (widths.size() == 1) {
    require(md.at("loftq.bits") == std::to_string(*widths.begin()), "loftq.bits");
    require(nlohmann::json::parse(md.at("loftq.codebook")) == codebooks.at(md.at("loftq.bits")), "loftq.codebook");
  } else {
    require(md.at("loftq.bits") == "mixed" && !md.count("loftq.codebook"), "loftq.bits of a mixed file");
  }
  std::printf("modeltool: %zu packed tensors verified%s\n", count, dq ? " (double-quantized scales)" : "");
  return 0;
}

int cmd_bnb(const std::string& input, const std::string& out, const std::string& ref) {
  st::Checkpoint in(input);
  st::SafetensorsFile base(out + "/model.safetensors"), ad(out + "/adapter_model.safetensors");
  const nlohmann::json rep = read_json(out + "/loftq_report.json");
  const bool dq = rep.at("settings").at("double_quant").get<bool>();
  require(rep.at("settings").at("format") == "bnb-nf4", "report format");
  const nlohmann::json cfg = read_json(out + "/config.json"), adcfg = read_json(out + "/adapter_config.json");
  const double scaling = adcfg.at("lora_alpha").get<double>() / adcfg.at("r").get<double>();
  const nlohmann::json& qc = cfg.at("quantization_config");
  require(qc.at("quant_method") == "bitsandbytes" && qc.at("load_in_4bit") == true && qc.at("load_in_8bit") == false &&
              qc.at("bnb_4bit_quant_type") == "nf4" && qc.at("bnb_4bit_use_double_quant") == dq &&
              qc.at("bnb_4bit_quant_storage") == "uint8" && qc.at("bnb_4bit_compute_dtype") == "float32",
          "quantization_config " + qc.dump());
  std::set<std::string> skip;
  for (const auto& x : qc.at("llm_int8_skip_modules")) skip.insert(x.get<std::string>());
  std::size_t targets = 0, extra = 0;
  for (const auto& kv : in.entries()) {
    const std::string& name = kv.first;
    const st::TensorInfo& ti = *kv.second.info;
    const st::SafetensorsFile& fi = in.file(kv.second.file);
    const std::string path = name.size() > 7 ? name.substr(0, name.size() - 7) : name;
    if (!is_target(name, ti)) {
      const st::TensorInfo& to = base.at(name);
      require(to.dtype == ti.dtype && to.shape == ti.shape && fi.read_bytes(ti) == base.read_bytes(to),
              "non-target not byte-identical: " + name);
      if (ti.shape.size() == 2) require(skip.count(path) == 1, "2-D non-target not in llm_int8_skip_modules: " + name);
      continue;
    }
    ++targets;
    require(!skip.count(path), "target in llm_int8_skip_modules: " + name);
    extra += dq ? 5 : 3;
    const std::uint64_t m = ti.shape[0], n = ti.shape[1];
    const RowMatrix Q = bnb_decode(base, name, m, n, "float32", dq);
    if (!ref.empty()) {
      st::SafetensorsFile rf(ref + "/model.safetensors");
      const RowMatrix R = rf.read_matrix(rf.at(name));
      require(std::memcmp(Q.data(), R.data(), static_cast<std::size_t>(Q.size()) * 4) == 0,
              name + ": the decoded Q differs from the reference run's Q");
    }
    const RowMatrix W = fi.read_matrix(ti);
    const RowMatrix LA = ad.read_matrix(ad.at("base_model.model." + path + ".lora_A.weight")),
                    LB = ad.read_matrix(ad.at("base_model.model." + path + ".lora_B.weight"));
    const double err =
        (W - Q - static_cast<float>(scaling) * (LB * LA)).cast<double>().norm() / W.cast<double>().norm();
    const double want = rep.at("tensors").at(name).at("rel_err").get<double>();
    require(std::abs(err - want) <= 1e-5 * want, name + ": ||W - Q - s B A|| / ||W|| = " + std::to_string(err) +
                                                     " with the decoded Q, the report says " + std::to_string(want));
  }
  require(targets > 0, "no targets");
  require(base.tensors().size() == in.entries().size() + extra, "model.safetensors holds other tensors");
  std::printf("modeltool: %zu bitsandbytes targets verified\n", targets);
  return 0;
}

int cmd_budget(const std::string& input, const std::string& out, const std::string& ref, double budget) {
  const nlohmann::json rep = read_json(out + "/loftq_report.json");
  const nlohmann::json& alloc = rep.at("bits_allocation");
  require(alloc.at("budget").get<double>() == budget, "report budget");
  st::SafetensorsFile ad(out + "/adapter_model.safetensors");
  const nlohmann::json ad_bits = nlohmann::json::parse(ad.metadata().at("loftq.tensor_bits"));
  double weights = 0, bits = 0;
  std::set<int> widths;
  for (auto it = rep.at("tensors").begin(); it != rep.at("tensors").end(); ++it) {
    const int b = it.value().at("bits").get<int>();
    require(b == 2 || b == 3 || b == 4, "width " + std::to_string(b));
    require(ad_bits.at(it.key()).get<int>() == b, "adapter metadata bits of " + it.key());
    const double n = it.value().at("shape")[0].get<double>() * it.value().at("shape")[1].get<double>();
    weights += n;
    bits += n * b;
    widths.insert(b);
    // The recomputed width is the measured one, bit for bit.
    require(
        it.value().at("candidate_sq_err").at(std::to_string(b)).get<double>() == it.value().at("sq_err").get<double>(),
        "recomputed error differs from the measured one for " + it.key());
  }
  const double avg = bits / weights;
  require(avg <= budget, "average code bits " + std::to_string(avg) + " exceed the budget");
  require(std::abs(avg - rep.at("average_code_bits").get<double>()) < 1e-12, "reported average");
  const double got = total_sq_error(input, out), base = total_sq_error(input, ref);
  std::printf("modeltool: budget %.4g: average %.4f code bits, %zu widths, total squared error %.6g (reference %.6g)\n",
              budget, avg, widths.size(), got, base);
  require(std::abs(got - rep.at("total_sq_err").get<double>()) <= 1e-3 * got, "reported total error");
  require(got < base, "the budgeted output is not better than the reference");
  if (budget > 2 && budget < 4) require(widths.size() >= 2, "a budget strictly between widths should mix them");
  return 0;
}

}  // namespace modeltool
