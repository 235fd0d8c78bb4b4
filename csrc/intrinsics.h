// intrinsics.h: <immintrin.h> without GCC 12's false warnings. Its avx512fintrin.h makes its "undefined" vectors
// by initialising them from themselves (`__m512 __Y = __Y;`), which -Wmaybe-uninitialized then reports at every
// inlined use (~650 warnings that hid real ones; GCC bug 105593, fixed in GCC 13). The warnings are located in
// the header, so silencing them around the include leaves them on for this project's own code.
#pragma once

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#else
#include <immintrin.h>
#endif
