// Helper for the loftq CLI tests (tests/cli/cli_test.sh).
//
//   npytool make PATH SHAPE DTYPE ORDER [MODE]
//       Writes a deterministic .npy by hand (not through loftq::io, so that
//       inputs the library refuses can be made too). SHAPE: 64x128, 2x3x4, ...
//       DTYPE: f4, f8, i4 (little endian). ORDER: C or F.
//       MODE: lowrank (default: a rank-4 signal plus noise), nan, inf, huge
//       (the lowrank values times 1e19: finite, but not their squares).
//       f8 files hold exactly the float32 values of the f4 file of the same
//       shape, so both must give bit-identical results.
//   npytool check PATH ROWS COLS
//       The file is a float32 C-order .npy of shape (ROWS, COLS), sized
//       exactly, with finite values. Parses the header itself.
//   npytool report PATH M N BITS RANK ITERS KEEP_BEST QUANTIZER SVD
//       report.json has every documented key with the expected values,
//       qlora_rel_err > rel_err, rel_err == history[best_iteration - 1] and,
//       with KEEP_BEST 0, best_iteration == ITERS.
//   npytool recon W.npy DIR
//       ||W - Q - A B^T|| / ||W|| from the files matches rel_err in the report.
//   npytool get PATH KEY[/KEY...]
//       prints a value of a JSON file (for numeric comparisons in the tests).
//
// Exit status 0 when the check passes, 1 with a message otherwise.

#include <loftq/io/npy.hpp>

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "npytool: %s\n", msg.c_str());
  std::exit(1);
}

std::vector<std::size_t> parse_shape(const std::string& s) {
  std::vector<std::size_t> dims;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, 'x')) dims.push_back(static_cast<std::size_t>(std::stoull(part)));
  if (dims.empty()) die("bad shape " + s);
  return dims;
}

struct Rng {
  std::uint64_t s;
  double next() {  // uniform in [-1, 1)
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<double>(s >> 11) * (2.0 / 9007199254740992.0) - 1.0;
  }
};

template <class T>
void put_le(std::string& out, T v) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));
  out.append(reinterpret_cast<const char*>(b), sizeof(T));  // the test hosts are little endian
}

int make(int argc, char** argv) {
  if (argc < 6) die("make PATH SHAPE DTYPE ORDER [MODE]");
  const std::string path = argv[2], dtype = argv[4], order = argv[5], mode = argc > 6 ? argv[6] : "lowrank";
  const std::vector<std::size_t> dims = parse_shape(argv[3]);
  std::size_t count = 1;
  for (std::size_t d : dims) count *= d;

  // Logical C-order values, float32-representable.
  std::vector<float> vals(count);
  if (dims.size() == 2) {
    const std::size_t m = dims[0], n = dims[1], k = 4;
    Rng rng{12345};
    std::vector<double> U(m * k), V(n * k);
    for (double& u : U) u = rng.next();
    for (double& v : V) v = rng.next();
    for (std::size_t i = 0; i < m; ++i)
      for (std::size_t j = 0; j < n; ++j) {
        double x = 0.3 * rng.next();
        for (std::size_t c = 0; c < k; ++c) x += U[i * k + c] * V[j * k + c];
        vals[i * n + j] = static_cast<float>(x);
      }
  } else {
    Rng rng{777};
    for (float& v : vals) v = static_cast<float>(rng.next());
  }
  if (mode == "nan" && count > 0) vals[count / 2] = std::numeric_limits<float>::quiet_NaN();
  if (mode == "inf" && count > 0) vals[count / 3] = std::numeric_limits<float>::infinity();
  if (mode == "huge")  // finite in float32, but their squares are not
    for (float& v : vals) v *= 1e19f;

  std::string descr;
  if (dtype == "f4")
    descr = "<f4";
  else if (dtype == "f8")
    descr = "<f8";
  else if (dtype == "i4")
    descr = "<i4";
  else
    die("bad dtype " + dtype);
  const bool fortran = order == "F";
  std::string shape = "(";
  for (std::size_t i = 0; i < dims.size(); ++i) shape += (i ? ", " : "") + std::to_string(dims[i]);
  if (dims.size() == 1) shape += ",";
  shape += ")";
  std::string header =
      "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") + ", 'shape': " + shape + ", }";
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';

  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  put_le<std::uint16_t>(out, static_cast<std::uint16_t>(header.size()));
  out += header;
  // Element order: C, or Fortran (first index fastest) for the 2-D case.
  for (std::size_t e = 0; e < count; ++e) {
    std::size_t src = e;
    if (fortran && dims.size() == 2) {
      const std::size_t m = dims[0], n = dims[1];
      const std::size_t i = e % m, j = e / m;
      src = i * n + j;
    }
    const float v = vals[src];
    if (dtype == "f4")
      put_le<float>(out, v);
    else if (dtype == "f8")
      put_le<double>(out, static_cast<double>(v));
    else
      put_le<std::int32_t>(out, static_cast<std::int32_t>(v * 100));
  }
  std::ofstream f(path, std::ios::binary);
  f.write(out.data(), static_cast<std::streamsize>(out.size()));
  if (!f) die("cannot write " + path);
  return 0;
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) die("cannot open " + path);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

int check(int argc, char** argv) {
  if (argc < 5) die("check PATH ROWS COLS");
  const std::string path = argv[2];
  const std::size_t rows = std::stoull(argv[3]), cols = std::stoull(argv[4]);
  const std::string b = slurp(path);
  if (b.size() < 10 || b.compare(0, 6, "\x93NUMPY") != 0) die(path + ": bad magic");
  if (b[6] != 1 || b[7] != 0) die(path + ": expected format version 1.0");
  const std::size_t hlen =
      static_cast<unsigned char>(b[8]) | (static_cast<std::size_t>(static_cast<unsigned char>(b[9])) << 8);
  if (10 + hlen > b.size()) die(path + ": header runs past the end");
  const std::string h = b.substr(10, hlen);
  const std::string want_shape = "'shape': (" + std::to_string(rows) + ", " + std::to_string(cols) + ")";
  if (h.find("'descr': '<f4'") == std::string::npos) die(path + ": not float32: " + h);
  if (h.find("'fortran_order': False") == std::string::npos) die(path + ": not C order: " + h);
  if (h.find(want_shape) == std::string::npos) die(path + ": expected " + want_shape + ", header " + h);
  if ((10 + hlen) % 64 != 0) die(path + ": data not 64-byte aligned");
  if (b.size() != 10 + hlen + rows * cols * 4)
    die(path + ": size " + std::to_string(b.size()) + " does not match the shape");
  for (std::size_t k = 0; k < rows * cols; ++k) {
    float v;
    std::memcpy(&v, b.data() + 10 + hlen + 4 * k, 4);
    if (!std::isfinite(v)) die(path + ": non-finite value at " + std::to_string(k));
  }
  return 0;
}

int report(int argc, char** argv) {
  if (argc < 11) die("report PATH M N BITS RANK ITERS KEEP_BEST QUANTIZER SVD");
  nlohmann::json r;
  try {
    r = nlohmann::json::parse(slurp(argv[2]));
  } catch (const std::exception& e) {
    die(std::string("report.json does not parse: ") + e.what());
  }
  const long m = std::stol(argv[3]), n = std::stol(argv[4]);
  const int bits = std::stoi(argv[5]), rank = std::stoi(argv[6]), iters = std::stoi(argv[7]);
  const bool keep_best = std::string(argv[8]) == "1";
  const std::string quant = argv[9], svd = argv[10];
  for (const char* key : {"shape", "bits", "rank", "iterations", "quantizer", "block_size", "svd", "seed", "threads",
                          "keep_best", "best_iteration", "history", "rel_err", "qlora_rel_err", "seconds", "version"})
    if (!r.contains(key)) die(std::string("report.json lacks '") + key + "'");
  try {
    if (r["shape"] != nlohmann::json::array({m, n})) die("shape is " + r["shape"].dump());
    if (r["bits"].get<int>() != bits) die("bits is " + r["bits"].dump());
    if (r["rank"].get<int>() != rank) die("rank is " + r["rank"].dump());
    if (r["iterations"].get<int>() != iters) die("iterations is " + r["iterations"].dump());
    if (r["quantizer"].get<std::string>() != quant) die("quantizer is " + r["quantizer"].dump());
    if (r["svd"].get<std::string>() != svd) die("svd is " + r["svd"].dump());
    if (r["keep_best"].get<bool>() != keep_best) die("keep_best is " + r["keep_best"].dump());
    if (r["threads"].get<int>() < 1) die("threads is " + r["threads"].dump());
    if (!r["version"].is_string()) die("version is not a string");
    const auto hist = r["history"].get<std::vector<double>>();
    const int best = r["best_iteration"].get<int>();
    const double rel = r["rel_err"].get<double>(), qlora = r["qlora_rel_err"].get<double>();
    if (static_cast<int>(hist.size()) != iters) die("history has " + std::to_string(hist.size()) + " entries");
    if (best < 1 || best > iters) die("best_iteration out of range");
    if (!keep_best && best != iters) die("--last but best_iteration is " + std::to_string(best));
    if (keep_best)
      for (double h : hist)
        if (h < hist[static_cast<std::size_t>(best - 1)]) die("best_iteration is not the best");
    if (rel != hist[static_cast<std::size_t>(best - 1)]) die("rel_err is not history[best_iteration - 1]");
    if (!(qlora > rel)) die("qlora_rel_err " + std::to_string(qlora) + " is not above rel_err " + std::to_string(rel));
    if (!(r["seconds"].get<double>() >= 0)) die("seconds is negative");
  } catch (const nlohmann::json::exception& e) {
    die(std::string("report.json has a wrongly typed value: ") + e.what());
  }
  return 0;
}

int get(int argc, char** argv) {
  if (argc < 4) die("get PATH KEY[/KEY...]");
  try {
    nlohmann::json j = nlohmann::json::parse(slurp(argv[2]));
    std::string path = argv[3];
    for (std::size_t b = 0;;) {
      const std::size_t e = path.find('/', b);
      j = j.at(path.substr(b, e == std::string::npos ? std::string::npos : e - b));
      if (e == std::string::npos) break;
      b = e + 1;
    }
    std::printf("%s\n", j.is_string() ? j.get<std::string>().c_str() : j.dump().c_str());
  } catch (const std::exception& e) {
    die(e.what());
  }
  return 0;
}

int recon(int argc, char** argv) {
  if (argc < 4) die("recon W.npy DIR");
  const std::string dir = argv[3];
  try {
    const auto W = loftq::io::read_npy_matrix<double>(argv[2]);
    const auto Q = loftq::io::read_npy_matrix<double>(dir + "/Q.npy");
    const auto A = loftq::io::read_npy_matrix<double>(dir + "/A.npy");
    const auto B = loftq::io::read_npy_matrix<double>(dir + "/B.npy");
    const double err = (W - Q - A * B.transpose()).norm() / W.norm();
    const double want = nlohmann::json::parse(slurp(dir + "/report.json"))["rel_err"].get<double>();
    if (std::abs(err - want) > 1e-4 * std::max(1.0, want))
      die("reconstruction error " + std::to_string(err) + " differs from rel_err " + std::to_string(want));
  } catch (const std::exception& e) {
    die(e.what());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) die("usage: npytool make|check|report|recon|get ...");
  const std::string cmd = argv[1];
  if (cmd == "make") return make(argc, argv);
  if (cmd == "check") return check(argc, argv);
  if (cmd == "report") return report(argc, argv);
  if (cmd == "recon") return recon(argc, argv);
  if (cmd == "get") return get(argc, argv);
  die("unknown command " + cmd);
}
