// zlib (Debian zlib1g-dev): gzip reading for the Fashion-MNIST IDX files and the
// deflate stream and CRC of PNG files.
#pragma once
#include <zlib.h>
