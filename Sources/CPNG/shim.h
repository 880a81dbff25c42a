// libpng (Debian libpng-dev), through its simplified API (png_image_*), which
// reports errors in the png_image struct instead of longjmp, so Swift can call it.
#pragma once
#include <png.h>
