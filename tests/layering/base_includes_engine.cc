// src/base is the bottom layer: it sees no other component.
#include "engine/module_info.h"
