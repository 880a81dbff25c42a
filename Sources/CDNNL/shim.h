// oneDNN (Debian libdnnl-dev, v2.x C API) and the OpenMP runtime it runs on.
#pragma once
#include <oneapi/dnnl/dnnl.h>

// oneDNN is built with the OpenMP runtime (libgomp); its thread count is OpenMP's.
// Declared here because omp.h lives in GCC's private include directory.
extern void omp_set_num_threads(int num_threads);
extern int omp_get_max_threads(void);
