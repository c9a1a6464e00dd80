// The safetensors sinks: the base model (dequantized or bitsandbytes NF4),
// the PEFT adapter and the packed codes.

#include "errors.hpp"
#include "safetensors_output.hpp"
#include "sink.hpp"
#include "source_gguf.hpp"
#include "source_safetensors.hpp"

#include <loftq/io/bnb.hpp>
#include <loftq/io/peft.hpp>

namespace loftq_cli {

namespace {

// The base model files; a full run also copies the other tensors into them
// and writes the files besides the tensors (finish()).
class BaseSink : public Sink {
 public:
  BaseSink(const SafetensorsSource& src, const StagedOutput& out, const Settings& s,
           const std::map<std::string, int>& bits_of)
      : src_(src), s_(s), w_(open_base_writers(out, src.checkpoint(), src.selected(), src.shard_run(), s, bits_of)) {}

  void copy(const std::string& name, std::size_t file, const void* data, std::uint64_t n,
            std::uint64_t offset) override {
    w_.files[file]->write(name, data, n, offset);
  }
  void commit() override {
    for (auto& f : w_.files) f->commit();
  }
  void finish(StagedOutput& out) override {
    if (!src_.shard_run())
      write_full_extras(out, src_.checkpoint(), src_.input(), s_, src_.all().modules, src_.all().targets);
  }

 protected:
  io::SafetensorsWriter& file_of(const ModelTarget& t) { return *w_.files[w_.file_of.at(t.name)]; }

  const SafetensorsSource& src_;
  const Settings s_;

 private:
  BaseWriters w_;
};

// Q in the input's dtype.
class DequantizedSink : public BaseSink {
 public:
  using BaseSink::BaseSink;
  void write(const ModelTarget& t, TargetResult& res) override {
    loftq::Result<float>& r = res.r;
    file_of(t).write_float(t.name, r.Q.data(), static_cast<std::uint64_t>(r.Q.size()), src_.target(t).info->dtype);
    r.Q.resize(0, 0);  // the last user of Q
  }
};

// The targets as bitsandbytes NF4 (with --double-quant its nested absmax).
class BnbNf4Sink : public BaseSink {
 public:
  using BaseSink::BaseSink;
  void write(const ModelTarget& t, TargetResult& res) override {
    try {
      io::write_bnb_nf4(file_of(t), bnb_target(src_.target(t)), res.r.packed,
                        s_.packing.double_quant ? &res.nested : nullptr);
    } catch (const loftq::Error& e) {
      throw InputError{t.where + ": " + e.what()};
    }
    res.r.Q.resize(0, 0);  // the last user of Q
  }
};

class PeftAdapterSink : public Sink {
 public:
  PeftAdapterSink(const SafetensorsSource& src, const StagedOutput& out, const Settings& s,
                  const std::map<std::string, int>& bits_of)
      : alpha_(s.alpha), w_(open_adapter_writer(out, src.selected(), s, bits_of)) {}
  void write(const ModelTarget& t, TargetResult& res) override {
    const auto peft = loftq::to_peft(res.r, alpha_);
    if (!peft.lora_A.allFinite() || !peft.lora_B.allFinite())
      throw InputError{t.where + ": the adapter at lora_alpha " + std::to_string(alpha_) + " is not finite"};
    w_->write(t.name, peft);
  }
  void commit() override { w_->commit(); }

 private:
  double alpha_;
  std::unique_ptr<io::AdapterWriter> w_;
};

class PackedSink : public Sink {
 public:
  PackedSink(const SafetensorsSource& src, const StagedOutput& out, const Settings& s,
             const std::map<std::string, int>& bits_of)
      : w_(open_packed_writer(out, src.selected(), s, bits_of)) {}
  void write(const ModelTarget& t, TargetResult& res) override { w_->write(t.name, res.r.packed); }
  void commit() override { w_->commit(); }

 private:
  std::unique_ptr<io::PackedWriter> w_;
};

}  // namespace

std::unique_ptr<Sink> dequantized_sink(const SafetensorsSource& src, const StagedOutput& out, const Settings& s,
                                       const std::map<std::string, int>& bits_of) {
  return std::make_unique<DequantizedSink>(src, out, s, bits_of);
}
std::unique_ptr<Sink> bnb_nf4_sink(const SafetensorsSource& src, const StagedOutput& out, const Settings& s,
                                   const std::map<std::string, int>& bits_of) {
  return std::make_unique<BnbNf4Sink>(src, out, s, bits_of);
}
std::unique_ptr<Sink> peft_adapter_sink(const SafetensorsSource& src, const StagedOutput& out, const Settings& s,
                                        const std::map<std::string, int>& bits_of) {
  return std::make_unique<PeftAdapterSink>(src, out, s, bits_of);
}
std::unique_ptr<Sink> packed_sink(const SafetensorsSource& src, const StagedOutput& out, const Settings& s,
                                  const std::map<std::string, int>& bits_of) {
  return std::make_unique<PackedSink>(src, out, s, bits_of);
}

void check_output(const Args& a, const Source& src) {
  const auto* st = dynamic_cast<const SafetensorsSource*>(&src);
  if (st && a.bnb_nf4) check_bnb_output(st->checkpoint(), st->input(), Settings::of(a), st->all().targets);
}

std::vector<std::unique_ptr<Sink>> open_sinks(const Args& a, const Source& src, const StagedOutput& out,
                                              const std::map<std::string, int>& bits_of) {
  std::vector<std::unique_ptr<Sink>> sinks;
  if (const auto* gguf = dynamic_cast<const GgufSource*>(&src)) {
    sinks.push_back(gguf_sink(a, *gguf, out));
    return sinks;
  }
  const auto& st = dynamic_cast<const SafetensorsSource&>(src);
  const Settings s = Settings::of(a);
  sinks.push_back(a.bnb_nf4 ? bnb_nf4_sink(st, out, s, bits_of) : dequantized_sink(st, out, s, bits_of));
  sinks.push_back(peft_adapter_sink(st, out, s, bits_of));
  if (a.packed) sinks.push_back(packed_sink(st, out, s, bits_of));
  return sinks;
}

}  // namespace loftq_cli
