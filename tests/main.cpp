// doctest's implementation and main. The test programs' precompiled header
// has included doctest.h already, whose interface guard then skips the line
// that derives DOCTEST_CONFIG_IMPLEMENT from _WITH_MAIN: both are defined here.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
