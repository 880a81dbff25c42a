// libjpeg-turbo (Debian libturbojpeg0-dev), through its TurboJPEG API, which returns
// error codes instead of calling longjmp, so Swift can call it.
#pragma once
#include <stddef.h>
#include <turbojpeg.h>
