// The executor must not know the job store: src/exec is below src/jobs.
#include "jobs/store.h"
