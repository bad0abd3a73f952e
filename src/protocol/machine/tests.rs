//! Unit tests of the machine, driven by hand: one replica, its peers played by the test.
