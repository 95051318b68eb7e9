package testenv

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// PeakRSS is a running process's peak resident memory in bytes (VmHWM), 0
// once it is gone. It counts the process alone, from its exec on.
func PeakRSS(pid int) int64 { return status(pid, "VmHWM:") }

// RSS is a process's resident memory now, in bytes; 0 if unknown.
func RSS(pid int) int64 { return status(pid, "VmRSS:") }

// status reads a size field of /proc/PID/status, in bytes.
func status(pid int, field string) int64 {
	raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// ResetPeakRSS starts a process's peak memory count afresh.
func ResetPeakRSS(pid int) {
	os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
}
