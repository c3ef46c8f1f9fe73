import RingPortTestSupport
import Testing

/// Every suite of this target, run one test at a time: the tests count the process's
/// descriptors, threads and memory, which concurrent tests would disturb.
@Suite(.serialized) struct RingPortServerTests {}
