// attnkit: efficient attention mechanisms. Umbrella header.
#pragma once

#include "attnkit/args.hpp"
#include "attnkit/context.hpp"
#include "attnkit/error.hpp"
#include "attnkit/mechanism.hpp"
#include "attnkit/options.hpp"
#include "attnkit/random.hpp"
#include "attnkit/tensor.hpp"
#include "attnkit/version.hpp"
