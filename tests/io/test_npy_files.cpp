// Tests for loftq/io/npy.hpp's file and stream side: read errors name the
// path, and reading from a pipe stops at what the header declares.

#include "npy_support.hpp"

using namespace npy_test;

TEST_SUITE("npy") {
  TEST_CASE("file errors are io_error and name the path") {
    TempDir dir;
    Eigen::MatrixXf M = Eigen::MatrixXf::Ones(2, 2);

    SUBCASE("write into a missing directory leaves nothing behind") {
      const std::string path = (dir.path / "missing" / "w.npy").string();
      auto e = error_of([&] { loftq::io::write_npy(path, M); });
      REQUIRE(e.has_value());
      CHECK(e->code() == Errc::io_error);
      CHECK(contains(e->what(), path));
      CHECK_FALSE(fs::exists(dir.path / "missing"));
      CHECK(dir.entries().empty());
    }
    SUBCASE("rename onto a directory fails and the temp file is removed") {
      fs::create_directory(dir.path / "target.npy");
      const std::string path = (dir.path / "target.npy").string();
      auto e = error_of([&] { loftq::io::write_npy(path, M); });
      REQUIRE(e.has_value());
      CHECK(e->code() == Errc::io_error);
      CHECK(contains(e->what(), path));
      CHECK(dir.entries() == std::vector<std::string>{"target.npy"});
    }
    SUBCASE("overwriting replaces the file whole") {
      const std::string path = (dir.path / "w.npy").string();
      loftq::io::write_npy(path, Eigen::MatrixXf::Zero(5, 5));
      loftq::io::write_npy(path, M);
      const auto R = loftq::io::read_npy_matrix<float>(path);
      CHECK(R.rows() == 2);
      CHECK(R(1, 1) == 1.0f);
      CHECK(dir.entries() == std::vector<std::string>{"w.npy"});
    }
    SUBCASE("reading") {
      const std::string missing = (dir.path / "nope.npy").string();
      auto e = error_of([&] { loftq::io::read_npy(missing); });
      REQUIRE(e.has_value());
      CHECK(e->code() == Errc::io_error);
      CHECK(contains(e->what(), missing));

      NPY_CHECK_ERRC(loftq::io::read_npy(dir.path.string()), Errc::io_error);

      const fs::path junk = dir.path / "junk.npy";
      write_file(junk, Bytes{'h', 'e', 'l', 'l', 'o'});
      auto e2 = error_of([&] { loftq::io::read_npy_matrix<float>(junk.string()); });
      REQUIRE(e2.has_value());
      CHECK(e2->code() == Errc::parse_error);
      CHECK(contains(e2->what(), junk.string()));

      const fs::path cube = dir.path / "cube.npy";
      write_file(cube, image(dict("<f4", false, "(1, 1, 1)"), f32le({1.0f})));
      auto e3 = error_of([&] { loftq::io::read_npy_matrix<double>(cube.string()); });
      REQUIRE(e3.has_value());
      CHECK(e3->code() == Errc::invalid_argument);
      CHECK(contains(e3->what(), cube.string()));
    }
  }

}  // TEST_SUITE

namespace {

// Feeds `head` and then `extra` zero bytes (or zeros until the reader closes
// when extra is SIZE_MAX) into a FIFO from a thread, while read_npy reads it.
// Returns the reader's error, if any; `written` gets what the writer got in.
std::optional<loftq::Error> read_from_fifo(const Bytes& head, std::size_t extra, std::size_t& written,
                                           NpyArray* out = nullptr) {
  TempDir dir;
  const std::string fifo = (dir.path / "w.npy").string();
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // A reader that closes early must show up as EPIPE in the writer, not kill
  // the test.
  struct sigaction ignore {
  }, old{};
  ignore.sa_handler = SIG_IGN;
  ::sigaction(SIGPIPE, &ignore, &old);
  std::atomic<std::size_t> sent{0};
  std::thread writer([&] {
    const int fd = ::open(fifo.c_str(), O_WRONLY);
    if (fd < 0) return;
    std::vector<unsigned char> zeros(1 << 16, 0);
    auto put = [&](const unsigned char* p, std::size_t n) {
      while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return false;
        p += w;
        n -= static_cast<std::size_t>(w);
        sent += static_cast<std::size_t>(w);
      }
      return true;
    };
    bool ok = put(head.data(), head.size());
    // "Forever" is capped at 512 MiB so that a reader which never stops fails
    // the test instead of hanging it.
    const std::size_t cap = extra == SIZE_MAX ? (std::size_t(512) << 20) : extra;
    for (std::size_t done = 0; ok && done < cap;) {
      const std::size_t n = std::min(zeros.size(), cap - done);
      ok = put(zeros.data(), n);
      done += n;
    }
    ::close(fd);
  });
  std::optional<loftq::Error> e = error_of([&] {
    NpyArray a = loftq::io::read_npy(fifo);
    if (out) *out = std::move(a);
  });
  writer.join();
  ::sigaction(SIGPIPE, &old, nullptr);
  written = sent;
  return e;
}

}  // namespace

TEST_CASE("read_npy_matrix reads float32 C-order files directly, with read_npy's results and errors") {
  TempDir dir;
  const Eigen::MatrixXf M = Eigen::MatrixXf::Random(37, 53);
  const fs::path p = dir.path / "m.npy";
  loftq::io::write_npy(p.string(), M);
  const std::vector<unsigned char> img = loftq::io::npy_image(M);
  auto same_error = [&](const Bytes& bytes) {
    write_file(p, bytes);
    const auto a = error_of([&] { loftq::io::to_matrix<float>(loftq::io::read_npy(p.string()), p.string()); });
    const auto b = error_of([&] { loftq::io::read_npy_matrix<float>(p.string()); });
    REQUIRE(a.has_value());
    REQUIRE(b.has_value());
    CHECK(a->code() == b->code());
    CHECK(std::string(a->what()) == b->what());
  };
  SUBCASE("the same matrix as read_npy + to_matrix, and the item size") {
    int itemsize = 0;
    const auto R = loftq::io::read_npy_matrix<float>(p.string(), &itemsize);
    CHECK(itemsize == 4);
    CHECK(R == loftq::io::to_matrix<float>(loftq::io::read_npy(p.string())));
    CHECK(R == M);
    // The head helper gives the bytes npy_image puts before the data.
    const std::string head = loftq::io::detail::npy_head_f32(37, 53);
    CHECK(head.size() % 64 == 0);
    CHECK(Bytes(img.begin(), img.begin() + static_cast<std::ptrdiff_t>(head.size())) ==
          Bytes(head.begin(), head.end()));
  }
  SUBCASE("float64 and Fortran order take the general path") {
    const Eigen::MatrixXd D = M.cast<double>();
    write_file(p, image(dict("<f8", false, "(2, 2)"), Bytes(32, 0)));
    int itemsize = 0;
    CHECK(loftq::io::read_npy_matrix<float>(p.string(), &itemsize) == Eigen::MatrixXf::Zero(2, 2));
    CHECK(itemsize == 8);
    write_file(p, image(dict("<f4", true, "(2, 3)"), f32le({1, 2, 3, 4, 5, 6})));
    const auto F = loftq::io::read_npy_matrix<float>(p.string());
    CHECK(F(0, 1) == 3.0f);  // column-major data: (0, 1) is the third value
    CHECK(F(1, 0) == 2.0f);
  }
  SUBCASE("truncated, trailing bytes and a shape promising more than the file: the same errors") {
    same_error(Bytes(img.begin(), img.end() - 5));
    Bytes longer = img;
    longer.push_back(0);
    same_error(longer);
    same_error(Bytes(img.begin(), img.begin() + 20));
  }
}

TEST_CASE("read_npy on a pipe reads no more than the header declares") {
  Eigen::MatrixXf M(3, 4);
  for (Eigen::Index i = 0; i < M.size(); ++i) M.data()[i] = static_cast<float>(i) - 5.5f;
  const Bytes img = loftq::io::npy_image(M);
  std::size_t written = 0;

  SUBCASE("exactly the declared data: the matrix") {
    NpyArray a;
    const auto e = read_from_fifo(img, 0, written, &a);
    REQUIRE_FALSE(e.has_value());
    REQUIRE(a.shape == std::vector<std::size_t>{3, 4});
    const auto R = loftq::io::to_matrix<float>(a);
    CHECK(R == M);
  }
  SUBCASE("endless data after it: a parse_error as soon as one byte too many arrives") {
    const auto t0 = std::chrono::steady_clock::now();
    const auto e = read_from_fifo(img, SIZE_MAX, written);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    REQUIRE(e.has_value());
    CHECK(e->code() == Errc::parse_error);
    CHECK(contains(e->what(), "trailing"));
    // The reader stopped after at most a pipe buffer and a stream buffer more
    // than the image, long before the writer's 512 MiB cap (a reader that drains
    // the stream buffers all of it first).
    CHECK(written < img.size() + (std::size_t(8) << 20));
    CHECK(s < 5.0);
  }
  SUBCASE("a header promising 4 TB on a short stream: truncated, with memory for what came") {
    // Same image with the shape patched to (1000000, 1000000), padded with
    // spaces to keep the header length.
    std::string h(img.begin() + 10, img.end() - static_cast<std::ptrdiff_t>(M.size() * 4));
    const auto at = h.find("(3, 4)");
    REQUIRE(at != std::string::npos);
    h.replace(at, 6, "(1000000, 1000000)");
    const auto pad = h.find("   ");
    REQUIRE(pad != std::string::npos);
    h.erase(pad, 12);
    const std::string patched = std::string(img.begin(), img.begin() + 10) + h;
    const Bytes big(patched.begin(), patched.end());
    REQUIRE(big.size() == img.size() - static_cast<std::size_t>(M.size()) * 4);
    const auto e = read_from_fifo(big, std::size_t(1) << 20, written);
    REQUIRE(e.has_value());
    CHECK(e->code() == Errc::parse_error);
    CHECK(contains(e->what(), "truncated"));
  }
}
