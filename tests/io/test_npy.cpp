// Tests for loftq/io/npy.hpp.  Images are assembled byte by byte here, not by
// the writer under test, so reader and writer cannot share a mistake.

#include "npy_support.hpp"

using namespace npy_test;

TEST_SUITE("npy") {
  TEST_CASE("float32 round trip is bit-exact for odd shapes") {
    TempDir dir;
    const std::pair<int, int> shapes[] = {{1, 1}, {3, 5}, {7, 1}, {1, 7}, {0, 4}, {4, 0}};
    std::uint32_t state = 12345;
    for (const auto& rc : shapes) {
      // Plain ints, not structured bindings: C++17 lambdas (CAPTURE) cannot capture those.
      const int r = rc.first, c = rc.second;
      CAPTURE(r);
      CAPTURE(c);
      Eigen::MatrixXf M(r, c);  // column-major source: the writer must still emit C order
      for (int i = 0; i < r; ++i) {
        for (int j = 0; j < c; ++j) {
          state = state * 1664525u + 1013904223u;
          float f;
          std::uint32_t u = state;
          std::memcpy(&f, &u, 4);
          if (f != f) f = static_cast<float>(i * 100 + j) + 0.1f;  // keep NaN payloads out of the picture
          M(i, j) = f;
        }
      }
      if (r * c >= 3) {
        M(0, 0) = -0.0f;
        M(r - 1, c - 1) = std::numeric_limits<float>::denorm_min();
      }
      const std::string path = (dir.path / "m.npy").string();
      loftq::io::write_npy(path, M);
      const auto R = loftq::io::read_npy_matrix<float>(path);
      REQUIRE(R.rows() == r);
      REQUIRE(R.cols() == c);
      for (int i = 0; i < r; ++i)
        for (int j = 0; j < c; ++j) CHECK(bits(R(i, j)) == bits(M(i, j)));

      const NpyArray a = loftq::io::read_npy(path);
      CHECK(a.shape == std::vector<std::size_t>{std::size_t(r), std::size_t(c)});
      CHECK_FALSE(a.fortran_order);
      CHECK(a.itemsize == 4);
      CHECK(dir.entries() == std::vector<std::string>{"m.npy"});  // no temp file left behind
    }
  }

  TEST_CASE("float64 source is stored as float32 and reads back as the rounded values") {
    TempDir dir;
    Eigen::MatrixXd D(2, 3);
    D << 0.1, -1e-3, 3.141592653589793, 1e30, -7.0, 2.0 / 3.0;
    const std::string path = (dir.path / "d.npy").string();
    loftq::io::write_npy(path, D);
    const auto F = loftq::io::read_npy_matrix<float>(path);
    const auto W = loftq::io::read_npy_matrix<double>(path);
    REQUIRE(F.rows() == 2);
    REQUIRE(F.cols() == 3);
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 3; ++j) {
        CHECK(bits(F(i, j)) == bits(static_cast<float>(D(i, j))));
        CHECK(W(i, j) == static_cast<double>(static_cast<float>(D(i, j))));
      }
    }
    // Also works on expressions, not just plain matrices.
    loftq::io::write_npy(path, D.transpose() * 2.0);
    const auto T = loftq::io::read_npy_matrix<double>(path);
    REQUIRE(T.rows() == 3);
    CHECK(T(2, 1) == static_cast<double>(static_cast<float>(2.0 * D(1, 2))));
  }

  TEST_CASE("npy_image layout matches what numpy writes") {
    Eigen::MatrixXf M(3, 4);
    M.setZero();
    M(1, 2) = 1.0f;
    const Bytes img = loftq::io::npy_image(M);
    REQUIRE(img.size() > 10);
    CHECK(std::memcmp(img.data(), "\x93NUMPY\x01\x00", 8) == 0);
    const std::size_t hlen = img[8] | (std::size_t(img[9]) << 8);
    CHECK((10 + hlen) % 64 == 0);
    CHECK(img[10 + hlen - 1] == '\n');
    const std::string header(img.begin() + 10, img.begin() + 10 + static_cast<std::ptrdiff_t>(hlen));
    CHECK(header.rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", 0) == 0);
    CHECK(header.find_first_not_of(' ', header.find('}') + 1) == hlen - 1);  // spaces, then '\n'
    CHECK(img.size() == 10 + hlen + 3 * 4 * 4);
    // C order: (1, 2) is flat element 6; 1.0f is 00 00 80 3f little endian.
    const unsigned char one[4] = {0x00, 0x00, 0x80, 0x3f};
    CHECK(std::memcmp(img.data() + 10 + hlen + 6 * 4, one, 4) == 0);
  }

  TEST_CASE("hand-built version 1.0 and 2.0 and 3.0 images, C order") {
    const Bytes data = f32le({0, 1, 2, 3, 4, 5});
    for (int major : {1, 2, 3}) {
      CAPTURE(major);
      const Bytes b = image(dict("<f4", false, "(2, 3)"), data, major);
      const NpyArray a = parse(b);
      CHECK(a.shape == std::vector<std::size_t>{2, 3});
      const auto M = loftq::io::to_matrix<float>(a);
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) CHECK(M(i, j) == static_cast<float>(i * 3 + j));
    }
  }

  TEST_CASE("fortran_order puts flat element j*rows+i at (i, j)") {
    const Bytes data = f32le({0, 1, 2, 3, 4, 5});  // flat[k] == k
    const NpyArray a = parse(image(dict("<f4", true, "(2, 3)"), data));
    CHECK(a.fortran_order);
    const auto M = loftq::io::to_matrix<float>(a);
    REQUIRE(M.rows() == 2);
    REQUIRE(M.cols() == 3);
    CHECK(M(0, 0) == 0.0f);
    CHECK(M(1, 0) == 1.0f);
    CHECK(M(0, 1) == 2.0f);
    CHECK(M(1, 1) == 3.0f);
    CHECK(M(0, 2) == 4.0f);
    CHECK(M(1, 2) == 5.0f);

    // A tall column in Fortran order is the same bytes as in C order.
    const auto V = loftq::io::to_matrix<double>(parse(image(dict("<f4", true, "(6, 1)"), data)));
    for (int i = 0; i < 6; ++i) CHECK(V(i, 0) == i);
  }

  TEST_CASE("big-endian and float64 data") {
    SUBCASE(">f4 literal bytes") {
      // 1.0f = 3f800000, -2.5f = c0200000, written most significant byte first.
      const Bytes data = {0x3f, 0x80, 0x00, 0x00, 0xc0, 0x20, 0x00, 0x00};
      const NpyArray a = parse(image(dict(">f4", false, "(1, 2)"), data));
      // The stored bytes are normalised to little endian.
      CHECK(a.data == Bytes{0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0});
      const auto M = loftq::io::to_matrix<float>(a);
      CHECK(M(0, 0) == 1.0f);
      CHECK(M(0, 1) == -2.5f);
    }
    SUBCASE("<f8 literal bytes") {
      // 1.0 = 3ff0000000000000, -0.5 = bfe0000000000000.
      const Bytes data = {0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0, 0, 0, 0, 0, 0, 0xe0, 0xbf};
      const NpyArray a = parse(image(dict("<f8", false, "(2, 1)"), data));
      CHECK(a.itemsize == 8);
      const auto D = loftq::io::to_matrix<double>(a);
      CHECK(D(0, 0) == 1.0);
      CHECK(D(1, 0) == -0.5);
      const auto F = loftq::io::to_matrix<float>(a);
      CHECK(F(1, 0) == -0.5f);
    }
    SUBCASE(">f8 with fortran order keeps full double precision") {
      const std::vector<double> v = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6};
      const NpyArray a = parse(image(dict(">f8", true, "(3, 2)"), reversed_items(f64le(v), 8)));
      const auto D = loftq::io::to_matrix<double>(a);
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 2; ++j) CHECK(D(i, j) == v[static_cast<std::size_t>(j * 3 + i)]);
    }
    SUBCASE("'=' and '|' and no byte-order char read as little endian") {
      for (const char* descr : {"=f4", "|f4", "f4"}) {
        CAPTURE(descr);
        const auto M = loftq::io::to_matrix<float>(parse(image(dict(descr, false, "(1, 1)"), f32le({1.5f}))));
        CHECK(M(0, 0) == 1.5f);
      }
    }
  }

  TEST_CASE("header syntax variants are accepted") {
    const Bytes d6 = f32le({0, 1, 2, 3, 4, 5});
    const std::vector<std::string> ok = {
        "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2, 3)}",
        "{'shape': (2,3,), 'fortran_order': False, 'descr': '<f4'}",
        "{ 'fortran_order' :False,'shape':( 2 , 3 ),'descr':'<f4' , }",
        "{'descr': '<f4',\n 'fortran_order': False,\n\t'shape': (2, 3),\n}",
    };
    for (const auto& h : ok) {
      CAPTURE(h);
      const NpyArray a = parse(image(h, d6));
      CHECK(a.shape == std::vector<std::size_t>{2, 3});
      CHECK(loftq::io::to_matrix<float>(a)(1, 2) == 5.0f);
    }
    // Header without the final '\n' or padding: numpy would not write it, but it is unambiguous.
    const std::string bare = dict("<f4", false, "(2, 3)");
    const NpyArray a = parse(raw_image(1, bare, bare.size(), d6));
    CHECK(a.shape == std::vector<std::size_t>{2, 3});
    // 1-d shape.
    CHECK(parse(image(dict("<f4", false, "(6,)"), d6)).shape == std::vector<std::size_t>{6});
  }

  TEST_CASE("0-d and zero-size arrays") {
    const NpyArray s = parse(image(dict("<f4", false, "()"), f32le({7.0f})));
    CHECK(s.shape.empty());
    CHECK(s.element_count() == 1);
    CHECK(s.data.size() == 4);
    auto e = error_of([&] { (void)loftq::io::to_matrix<float>(s); });
    REQUIRE(e.has_value());
    CHECK(e->code() == Errc::invalid_argument);
    CHECK(contains(e->what(), "shape ()"));

    const NpyArray z = parse(image(dict("<f4", false, "(0, 4)"), {}));
    CHECK(z.shape == std::vector<std::size_t>{0, 4});
    const auto Z = loftq::io::to_matrix<float>(z);
    CHECK(Z.rows() == 0);
    CHECK(Z.cols() == 4);

    // A zero dim makes the array empty whatever the others are; an unrepresentable
    // matrix width is still refused by to_matrix rather than wrapped.
    const NpyArray wide = parse(image(dict("<f4", false, "(0, 18446744073709551615)"), {}));
    CHECK(wide.element_count() == 0);
    NPY_CHECK_ERRC(loftq::io::to_matrix<float>(wide), Errc::invalid_argument);

    // Empty but 4.6e16 rows tall, in either order: an empty matrix of that
    // shape at once, not a loop over the rows.
    for (bool fortran : {false, true}) {
      const NpyArray tall = parse(image(dict("<f4", fortran, "(46116860184184273, 0)"), {}));
      const auto T = loftq::io::to_matrix<float>(tall);
      CHECK(T.rows() == 46116860184184273);
      CHECK(T.cols() == 0);
    }
  }

  TEST_CASE("malformed images are parse_error") {
    const Bytes d6 = f32le({0, 1, 2, 3, 4, 5});
    const Bytes good = image(dict("<f4", false, "(2, 3)"), d6);
    REQUIRE_NOTHROW(parse(good));

    SUBCASE("bad magic") {
      Bytes b = good;
      b[1] = 'n';
      NPY_CHECK_ERRC(parse(b), Errc::parse_error);
      b = good;
      b[0] = 0x92;
      NPY_CHECK_ERRC(parse(b), Errc::parse_error);
      NPY_CHECK_ERRC(parse(Bytes{}), Errc::parse_error);
      NPY_CHECK_ERRC(parse_npy(nullptr, 0), Errc::parse_error);
    }
    SUBCASE("truncated before or inside the header") {
      NPY_CHECK_ERRC(parse(Bytes(good.begin(), good.begin() + 9)), Errc::parse_error);
      NPY_CHECK_ERRC(parse(Bytes(good.begin(), good.begin() + 30)), Errc::parse_error);
      const Bytes v2 = image(dict("<f4", false, "(2, 3)"), d6, 2);
      NPY_CHECK_ERRC(parse(Bytes(v2.begin(), v2.begin() + 11)), Errc::parse_error);
    }
    SUBCASE("header length beyond the file") {
      const std::string h = dict("<f4", false, "(2, 3)") + "\n";
      auto e = error_of([&] { parse(raw_image(1, h, h.size() + 100, {})); });
      REQUIRE(e.has_value());
      CHECK(e->code() == Errc::parse_error);
      CHECK(contains(e->what(), "header length"));
      NPY_CHECK_ERRC(parse(raw_image(2, h, 0xffffffffu, {})), Errc::parse_error);
      // Over the 1 MiB cap even though it is "there".
      const std::string big =
          dict("<f4", false, "()") + std::string((1 << 20) + 1 - dict("<f4", false, "()").size(), ' ');
      auto e2 = error_of([&] { parse(raw_image(2, big, big.size(), f32le({1.0f}))); });
      REQUIRE(e2.has_value());
      CHECK(e2->code() == Errc::parse_error);
      CHECK(contains(e2->what(), "1 MiB"));
    }
    SUBCASE("truncated data says expected vs actual bytes") {
      const Bytes b(good.begin(), good.end() - 4);
      auto e = error_of([&] { parse(b); });
      REQUIRE(e.has_value());
      CHECK(e->code() == Errc::parse_error);
      CHECK(contains(e->what(), "24"));
      CHECK(contains(e->what(), "20"));
    }
    SUBCASE("trailing bytes") {
      Bytes b = good;
      b.push_back(0);
      auto e = error_of([&] { parse(b); });
      REQUIRE(e.has_value());
      CHECK(e->code() == Errc::parse_error);
      CHECK(contains(e->what(), "trailing"));
    }
    SUBCASE("bad dicts") {
      const std::vector<std::string> bad = {
          "{'descr': '<f4', 'fortran_order': False}",                                   // missing shape
          "{'descr': '<f4', 'shape': (2, 3)}",                                          // missing fortran_order
          "{'fortran_order': False, 'shape': (2, 3)}",                                  // missing descr
          "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}",  // duplicate
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'shape': (2, 3)}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'extra': 1}",  // unknown key
          "{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3)}",             // negative
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3)}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3L)}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2.0, 3)}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (02, 3)}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (6)}",  // an int, not a tuple
          "{'descr': '<f4', 'fortran_order': False, 'shape': (,)}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2,, 3)}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}",
          "{'descr': '<f4', 'fortran_order': false, 'shape': (2, 3)}",
          "{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3)}",
          "{'descr': '<f4', 'fortran_order': Falsey, 'shape': (2, 3)}",
          "{'descr': <f4, 'fortran_order': False, 'shape': (2, 3)}",
          "{'descr': '<f4\", 'fortran_order': False, 'shape': (2, 3)}",
          "{'descr' '<f4', 'fortran_order': False, 'shape': (2, 3)}",
          "{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3)}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} x",
          "{,'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}",
          "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3),,}",
          "'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)",
          "not a dict at all",
          "",
          "{}",
          std::string("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)}") + std::string(1, '\0'),
      };
      for (const auto& h : bad) {
        CAPTURE(h);
        NPY_CHECK_ERRC(parse(image(h, d6)), Errc::parse_error);
      }
    }
    SUBCASE("messages say what is wrong") {
      const std::pair<std::string, std::string> cases[] = {
          {"{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3)}", "negative"},
          {"{'descr': '<f4', 'fortran_order': False}", "no 'shape'"},
          {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'descr': '<f4'}", "duplicate header key 'descr'"},
          {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'bogus\x01': 1}",
           "unknown header key 'bogus\\x01'"},
      };
      for (const auto& hc : cases) {
        const std::string& h = hc.first;
        const std::string& needle = hc.second;
        CAPTURE(h);
        const Bytes b = image(h, d6);
        auto e = error_of([&] { parse_npy(b.data(), b.size(), "some/file.npy"); });
        REQUIRE(e.has_value());
        CHECK(e->code() == Errc::parse_error);
        CHECK_MESSAGE(contains(e->what(), needle), std::string(e->what()));
        CHECK(contains(e->what(), "some/file.npy"));
        CHECK(std::string(e->what()).find('\n') == std::string::npos);
      }
    }
    SUBCASE("shape whose element or byte count overflows size_t") {
      // 2^32 * 2^32 wraps to exactly 0 elements: with no data bytes a missing
      // check would accept it.
      for (const char* shape :
           {"(18446744073709551615, 2)", "(4294967296, 4294967296)", "(4611686018427387904,)",
            "(18446744073709551616,)", "(99999999999999999999999, 1)", "(65536, 65536, 65536, 65536)"}) {
        for (const Bytes& data : {d6, Bytes{}}) {
          CAPTURE(shape);
          auto e = error_of([&] { parse(image(dict("<f4", false, shape), data)); });
          REQUIRE(e.has_value());
          CHECK(e->code() == Errc::parse_error);
          CHECK(contains(e->what(), "overflows"));
        }
      }
    }
    SUBCASE("too many dimensions") {
      std::string shape = "(";
      for (int k = 0; k < 65; ++k) shape += "1, ";
      shape += ")";
      NPY_CHECK_ERRC(parse(image(dict("<f4", false, shape), f32le({1.0f}))), Errc::parse_error);
    }
  }

  TEST_CASE("valid npy of other dtypes is unsupported, naming the descr") {
    for (const char* descr : {"<i4", "<c8", "<f2", "|O", "<u1", "|b1", "<f16", "float32"}) {
      CAPTURE(descr);
      auto e = error_of([&] { parse(image(dict(descr, false, "(2, 2)"), Bytes(16, 0))); });
      REQUIRE(e.has_value());
      CHECK(e->code() == Errc::unsupported);
      CHECK(contains(e->what(), descr));
    }
    NPY_CHECK_ERRC(parse(image("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}", Bytes(8, 0))),
                   Errc::unsupported);
    Bytes v4 = image(dict("<f4", false, "(1, 1)"), f32le({1.0f}), 2);
    v4[6] = 4;
    NPY_CHECK_ERRC(parse(v4), Errc::unsupported);
  }

  TEST_CASE("integer arrays (token ids) through the _integers readers") {
    auto le = [](std::initializer_list<std::int64_t> v, std::size_t isz) {
      Bytes b;
      for (std::int64_t x : v)
        for (std::size_t k = 0; k < isz; ++k)
          b.push_back(static_cast<unsigned char>(static_cast<std::uint64_t>(x) >> (8 * k)));
      return b;
    };
    auto ints = [](const Bytes& b) { return loftq::io::parse_npy_integers(b.data(), b.size()); };
    const auto m32 = loftq::io::to_int_matrix(
        ints(image(dict("<i4", false, "(2, 3)"), le({0, 1, -2, 2147483647, -2147483648LL, 5}, 4))));
    CHECK(m32.rows() == 2);
    CHECK(m32(0, 2) == -2);
    CHECK(m32(1, 0) == 2147483647);
    CHECK(m32(1, 1) == -2147483648LL);
    const auto m64 =
        loftq::io::to_int_matrix(ints(image(dict("<i8", true, "(2, 2)"), le({1, 2, 3, std::int64_t(1) << 40}, 8))));
    CHECK(m64(1, 0) == 2);  // Fortran order: column-major
    CHECK(m64(1, 1) == std::int64_t(1) << 40);
    const auto be =
        loftq::io::to_int_matrix(ints(image(dict(">i4", false, "(1, 2)"), reversed_items(le({7, -7}, 4), 4))));
    CHECK(be(0, 0) == 7);
    CHECK(be(0, 1) == -7);
    // Floats and other integer widths stay out; the float readers still refuse ints.
    for (const char* descr : {"<f4", "<u4", "<i2", "|i1"}) {
      CAPTURE(descr);
      NPY_CHECK_ERRC(ints(image(dict(descr, false, "(1, 1)"), Bytes(4, 0))), Errc::unsupported);
    }
    NPY_CHECK_ERRC(loftq::io::to_int_matrix(parse(image(dict("<f4", false, "(1, 1)"), f32le({1.0f})))),
                   Errc::unsupported);
    NPY_CHECK_ERRC(loftq::io::to_int_matrix(ints(image(dict("<i4", false, "(4,)"), Bytes(16, 0)))),
                   Errc::invalid_argument);
    NPY_CHECK_ERRC(ints(image(dict("<i4", false, "(2, 2)"), Bytes(12, 0))), Errc::parse_error);
  }

  TEST_CASE("to_matrix wants exactly 2 dims") {
    const NpyArray a3 = parse(image(dict("<f4", false, "(2, 1, 3)"), f32le({0, 1, 2, 3, 4, 5})));
    auto e = error_of([&] { (void)loftq::io::to_matrix<float>(a3, "w.npy"); });
    REQUIRE(e.has_value());
    CHECK(e->code() == Errc::invalid_argument);
    CHECK(contains(e->what(), "(2, 1, 3)"));
    CHECK(contains(e->what(), "w.npy"));
    const NpyArray a1 = parse(image(dict("<f4", false, "(6,)"), f32le({0, 1, 2, 3, 4, 5})));
    NPY_CHECK_ERRC(loftq::io::to_matrix<float>(a1), Errc::invalid_argument);

    // A hand-made NpyArray whose bytes disagree with its shape is caught too.
    NpyArray bad;
    bad.shape = {2, 2};
    bad.data.resize(12);
    NPY_CHECK_ERRC(loftq::io::to_matrix<float>(bad), Errc::invalid_argument);
    bad.itemsize = 2;
    NPY_CHECK_ERRC(loftq::io::to_matrix<float>(bad), Errc::unsupported);
  }

  TEST_CASE("values outside float32 range are refused, not made infinite") {
    const NpyArray a = parse(image(dict("<f8", false, "(1, 2)"), f64le({1.0, 1e300})));
    NPY_CHECK_ERRC(loftq::io::to_matrix<float>(a), Errc::non_finite);
    CHECK(loftq::io::to_matrix<double>(a)(0, 1) == 1e300);
    // Infinity is a value, not an overflow: it passes through for the caller to judge.
    const NpyArray inf = parse(image(dict("<f8", false, "(1, 1)"), f64le({std::numeric_limits<double>::infinity()})));
    CHECK(loftq::io::to_matrix<float>(inf)(0, 0) == std::numeric_limits<float>::infinity());

    TempDir dir;
    Eigen::MatrixXd D(1, 1);
    D(0, 0) = -1e300;
    const std::string path = (dir.path / "x.npy").string();
    auto e = error_of([&] { loftq::io::write_npy(path, D); });
    REQUIRE(e.has_value());
    CHECK(e->code() == Errc::non_finite);
    CHECK(contains(e->what(), path));
    CHECK(dir.entries().empty());
  }

  TEST_CASE("every truncation of a valid image throws loftq::Error") {
    const std::vector<Bytes> images = {
        image(dict("<f4", false, "(2, 3)"), f32le({0, 1, 2, 3, 4, 5})),
        image(dict(">f8", true, "(3, 1)"), Bytes(24, 0x40), 2),
        image(dict("<f4", false, "()"), f32le({1.0f}), 3),
        loftq::io::npy_image(Eigen::MatrixXf::Constant(2, 2, 0.5f)),
    };
    for (const Bytes& img : images) {
      REQUIRE_NOTHROW(parse(img));
      for (std::size_t n = 0; n < img.size(); ++n) {
        CAPTURE(n);
        // A fresh heap copy of exactly n bytes, so ASan flags any read past the end.
        const std::unique_ptr<unsigned char[]> buf(new unsigned char[n ? n : 1]);
        if (n) std::memcpy(buf.get(), img.data(), n);
        auto e = error_of([&] { parse_npy(buf.get(), n); });
        CHECK(e.has_value());
      }
    }
  }

  TEST_CASE("single-byte corruptions either parse or throw loftq::Error") {
    const Bytes img = image(dict("<f4", true, "(2, 3)"), f32le({0, 1, 2, 3, 4, 5}));
    const std::size_t data_off = img.size() - 24;
    for (std::size_t pos = 0; pos < data_off; ++pos) {
      for (unsigned char v : {0x00, 0x01, 0x0a, 0x20, 0x27, 0x28, 0x29, 0x2c, 0x2d, 0x30, 0x39, 0x7d, 0x80, 0xff}) {
        Bytes b = img;
        b[pos] = v;
        const std::unique_ptr<unsigned char[]> buf(new unsigned char[b.size()]);
        std::memcpy(buf.get(), b.data(), b.size());
        try {
          const NpyArray a = parse_npy(buf.get(), b.size());
          CHECK(a.data.size() == a.element_count() * static_cast<std::size_t>(a.itemsize));
        } catch (const loftq::Error&) {
        }
      }
    }
  }

}  // TEST_SUITE
