// The layout assertions of layout_test.c, through the C++ compiler: the host
// (C++) and a plugin (C or C++) must agree on every offset.
#include "layout_test.c"
