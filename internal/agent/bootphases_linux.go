package agent

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sbx-dev/sbx/api/agentapi"
)

// bootLog records the guest's boot phases for the hello response.
type bootLog struct {
	mu     sync.Mutex
	phases []agentapi.BootPhase // guarded by mu
}

// bootPhases is this guest's boot, filled by Init and read by hello.
var bootPhases bootLog

func (b *bootLog) add(name string, d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.phases = append(b.phases, agentapi.BootPhase{Name: name, DurationUS: d.Microseconds()})
}

// reset forgets the phases (for tests).
func (b *bootLog) reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.phases = nil
}

// list returns a copy of the phases recorded so far.
func (b *bootLog) list() []agentapi.BootPhase {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.phases) == 0 {
		return nil
	}
	return append([]agentapi.BootPhase(nil), b.phases...)
}

// sinceBoot is CLOCK_BOOTTIME: how long ago the kernel started counting,
// which for PID 1's first instructions is the kernel's own boot.
func sinceBoot() (time.Duration, bool) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, false
	}
	return time.Duration(ts.Nano()), true
}
