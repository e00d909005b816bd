// cuda_sim's stand-in for the CUDA runtime header (see sim.h).
#pragma once
#include "sim.h"
