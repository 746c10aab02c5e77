package standinvm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// ModulesDir holds the kernel modules in the initramfs, and LoadOrderFile
// (one file name a line, dependencies first) says in which order to load
// them: there is no modprobe and no modules.dep in the VM.
const (
	ModulesDir    = "/lib/modules/standin"
	LoadOrderFile = "load.order"
)

// loadModules loads every module the order file names. A module that is
// already there (built in, or loaded before a restart of /init) is fine.
func loadModules(dir string) ([]string, error) {
	order, err := os.ReadFile(filepath.Join(dir, LoadOrderFile))
	if err != nil {
		return nil, fmt.Errorf("reading the module load order: %w", err)
	}
	var loaded []string
	sc := bufio.NewScanner(bytes.NewReader(order))
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		if name == "" || strings.HasPrefix(name, "#") {
			continue
		}
		if err := loadModule(filepath.Join(dir, name)); err != nil {
			return loaded, fmt.Errorf("loading kernel module %s: %w", name, err)
		}
		loaded = append(loaded, strings.TrimSuffix(name, ".ko"))
	}
	return loaded, sc.Err()
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	err = unix.FinitModule(int(f.Fd()), "", 0)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if errors.Is(err, unix.ENOSYS) {
		// Kernels without finit_module take the image itself.
		b, rerr := os.ReadFile(path)
		if rerr != nil {
			return rerr
		}
		err = unix.InitModule(b, "")
		if errors.Is(err, unix.EEXIST) {
			return nil
		}
	}
	return err
}

// Names of the stand-in VM's boot assets in the directory scripts/qemu-up
// fills (internal/tools/qemu-assets writes them, package provisioners finds
// them there).
const (
	KernelName    = "vmlinuz" // Debian's cloud kernel
	InitramfsName = "pullthrough-standin-initramfs.img"
)
