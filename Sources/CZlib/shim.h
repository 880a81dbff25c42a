// zlib (Debian zlib1g-dev): CRC-32s of checkpoint shards, gzip reading of the
// Fashion-MNIST IDX files.
#pragma once
#include <zlib.h>
