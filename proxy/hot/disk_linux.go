package hot

import (
	"io/fs"
	"syscall"
	"time"
)

// changeTime is when the file's content or metadata last changed: set by
// the kernel on every write, and by no one at will.
func changeTime(info fs.FileInfo) time.Time {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return time.Unix(st.Ctim.Sec, st.Ctim.Nsec)
	}
	return info.ModTime()
}

// freeSpace is what is free on dir's filesystem, and the floor the tier
// leaves free: 5% of the filesystem, at most 1 GiB, so that the spool,
// the logs and whatever else shares the disk never find it full.
func freeSpace(dir string) (free, floor int64, err error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	total := int64(st.Blocks) * st.Bsize
	return int64(st.Bavail) * st.Bsize, min(total/20, 1<<30), nil
}
