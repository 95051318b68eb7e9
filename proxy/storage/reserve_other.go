//go:build !linux

package storage

import "os"

// Reserve is a no-op where the disk cannot be reserved ahead: the
// writes find out.
func Reserve(*os.File, int64) error { return nil }

// Unreserve is a no-op where nothing was reserved.
func Unreserve(*os.File, int64, int64) {}
