package standinvm

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Setup mounts what a PID 1 in an initramfs finds missing: /proc (the
// kernel command line), /sys (netlink wants it for nothing, but Go's net
// package reads /sys/class/net), /dev (devtmpfs), and quiets the kernel's
// console messages so they do not break into the summary line.
func Setup() error {
	var errs []error
	for _, m := range []struct{ src, dst, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := os.MkdirAll(m.dst, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.Mount(m.src, m.dst, m.fstype, 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mounting %s on %s: %w", m.fstype, m.dst, err))
		}
	}
	// Console log level 1: only emergencies reach the serial console now.
	if err := os.WriteFile("/proc/sys/kernel/printk", []byte("1 4 1 7"), 0o644); err != nil {
		errs = append(errs, fmt.Errorf("quieting the kernel console: %w", err))
	}
	return errors.Join(errs...)
}
