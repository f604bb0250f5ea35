#include "keel/version.h"

namespace keel {

std::string_view VersionString() { return KEEL_VERSION_STRING; }

}  // namespace keel
