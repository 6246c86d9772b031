// qforge-w8a8: what the plugin's translation units share.
#pragma once

#include <qforge/cpp/plugin.hpp>

namespace qforge::w8a8 {

// org.qforge.w8a8 and org.qforge.fp8 (quantizers.cpp).
void describe_quantizers(Plugin& plugin);
// org.qforge.w8a8.layer (layer.cpp).
void describe_layer(Plugin& plugin);

}  // namespace qforge::w8a8
