#include "CRingPortThread.h"

// The one definition of the variable the header declares (see there).
__thread void *CRingPortThread_poolWorker __attribute__((tls_model("initial-exec"))) = 0;
