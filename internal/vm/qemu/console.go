package qemu

// consoleMax caps a VM's console log: the guest writes it (root in the
// guest can write the serial port without end), so past the cap the
// newest half moves to the log's ".1" file and the log starts again
// (internal/logcap).
const consoleMax = 16 << 20
