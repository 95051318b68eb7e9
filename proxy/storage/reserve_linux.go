package storage

import (
	"errors"
	"os"
	"syscall"
)

// fallocKeepSize reserves blocks without changing the file's length.
const fallocKeepSize = 0x1

// Reserve sets aside size bytes of disk for f, so that a full disk or a
// quota shows before the first byte is written rather than halfway.
// ErrNoSpace says it cannot; a filesystem that cannot reserve is not an
// error (the writes then find out).
func Reserve(f *os.File, size int64) error {
	if size <= 0 {
		return nil
	}
	err := syscall.Fallocate(int(f.Fd()), fallocKeepSize, 0, size)
	switch {
	case err == nil, errors.Is(err, syscall.EOPNOTSUPP), errors.Is(err, syscall.ENOSYS):
		return nil
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return ErrNoSpace
	}
	return err
}

// fallocPunchHole frees a range's blocks.
const fallocPunchHole = 0x2

// Unreserve gives back what Reserve set aside past f's first off bytes:
// a file kept to be written later holds only what it has.
func Unreserve(f *os.File, off, size int64) {
	if size > off {
		syscall.Fallocate(int(f.Fd()), fallocPunchHole|fallocKeepSize, off, size-off)
	}
}
