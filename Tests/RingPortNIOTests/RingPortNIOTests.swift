import Testing

/// Every suite of this target, run one test at a time: the tests count the process's
/// descriptors, which concurrent tests would disturb.
@Suite(.serialized) struct RingPortNIOTests {}
