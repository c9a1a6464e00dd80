#pragma once
// Umbrella header: everything the library offers except file I/O.

#include "bnb_double_quant.hpp"
#include "codebook.hpp"
#include "data_aware.hpp"
#include "double_quant.hpp"
#include "error.hpp"
#include "initialize.hpp"
#include "input_statistics.hpp"
#include "mixed_precision.hpp"
#include "options.hpp"
#include "packed.hpp"
#include "quantizer.hpp"
#include "simd.hpp"
#include "svd.hpp"
#include "threads.hpp"
#include "version.hpp"
