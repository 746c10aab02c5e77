// Command qemu-assets builds the stand-in Talos VM's boot assets from a
// Debian kernel package extracted with dpkg-deb -x and the static
// talos-standin-init binary: a copy of the kernel (vmlinuz) and a gzipped
// newc initramfs with /init, /dev/console and the kernel modules the VM
// needs (virtio PCI, virtio-net and virtio-rng, with everything they depend
// on, in load order). scripts/qemu-up runs it; it prints nothing but errors.
//
//	qemu-assets -kernel-root DIR -init FILE -out DIR
package main

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/pullthrough/pullthrough/internal/initramfs"
	"github.com/pullthrough/pullthrough/internal/standinvm"
)

// wantedModules are what the VM's one NIC and Talos's launcher's
// virtio-rng-pci device need; their dependencies are found from the
// modules themselves.
var wantedModules = []string{"virtio_pci", "virtio_net", "virtio_rng"}

// Output names, which the provisioners package looks for.
const (
	KernelName    = standinvm.KernelName
	InitramfsName = standinvm.InitramfsName
)

func main() {
	root := flag.String("kernel-root", "", "a Debian linux-image package extracted with dpkg-deb -x")
	initBin := flag.String("init", "", "the static talos-standin-init binary")
	out := flag.String("out", "", "directory to write vmlinuz and the initramfs to")
	flag.Parse()
	if *root == "" || *initBin == "" || *out == "" {
		fmt.Fprintln(os.Stderr, "usage: qemu-assets -kernel-root DIR -init FILE -out DIR")
		os.Exit(2)
	}
	if err := build(*root, *initBin, *out); err != nil {
		fmt.Fprintf(os.Stderr, "qemu-assets: %v\n", err)
		os.Exit(1)
	}
}

func build(root, initBin, out string) error {
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return fmt.Errorf("want one boot/vmlinuz-* in %s, found %d", root, len(kernels))
	}
	modDirs, _ := filepath.Glob(filepath.Join(root, "lib", "modules", "*", "kernel"))
	if len(modDirs) != 1 {
		return fmt.Errorf("want one lib/modules/*/kernel in %s, found %d", root, len(modDirs))
	}
	mods, err := closure(modDirs[0], wantedModules)
	if err != nil {
		return err
	}
	initData, err := os.ReadFile(initBin)
	if err != nil {
		return fmt.Errorf("reading the init binary: %w", err)
	}
	entries := []initramfs.Entry{
		{Path: "init", Mode: 0o755, Data: initData},
		{Path: "dev/console", Mode: 0o600, Dev: &[2]uint32{5, 1}},
		{Path: "proc", Mode: 0o755, Dir: true},
		{Path: "sys", Mode: 0o755, Dir: true},
		{Path: "tmp", Mode: 0o1777, Dir: true},
	}
	var order strings.Builder
	order.WriteString("# written by qemu-assets: dependencies first\n")
	for _, m := range mods {
		data, err := os.ReadFile(m.path)
		if err != nil {
			return err
		}
		file := m.name + ".ko"
		entries = append(entries, initramfs.Entry{Path: filepath.Join(standinvm.ModulesDir, file), Mode: 0o644, Data: data})
		order.WriteString(file + "\n")
	}
	entries = append(entries, initramfs.Entry{Path: filepath.Join(standinvm.ModulesDir, standinvm.LoadOrderFile), Mode: 0o644, Data: []byte(order.String())})

	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err := initramfs.Write(zw, entries); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	kernel, err := os.ReadFile(kernels[0])
	if err != nil {
		return err
	}
	// Written under temporary names and renamed, so a reader never sees
	// half an asset.
	for name, data := range map[string][]byte{KernelName: kernel, InitramfsName: buf.Bytes()} {
		tmp := filepath.Join(out, "."+name+".tmp")
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, filepath.Join(out, name)); err != nil {
			return err
		}
	}
	return nil
}

type module struct {
	name, path string
	deps       []string
}

// closure finds the wanted modules under dir and everything they depend
// on (the depends= field of each module's .modinfo section, as depmod reads
// it), ordered so that every module comes after its dependencies.
func closure(dir string, wanted []string) ([]module, error) {
	byName := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			// Module names use '_' where file names may use '-'.
			byName[strings.ReplaceAll(strings.TrimSuffix(d.Name(), ".ko"), "-", "_")] = p
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing kernel modules in %s: %w", dir, err)
	}
	var out []module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("kernel modules depend on each other in a cycle: %s", strings.Join(append(chain, name), " -> "))
		case 2:
			return nil
		}
		p, ok := byName[name]
		if !ok {
			return fmt.Errorf("kernel module %s (needed by %s) is not in %s", name, strings.Join(chain, " -> "), dir)
		}
		state[name] = 1
		deps, err := modDepends(p)
		if err != nil {
			return err
		}
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, module{name: name, path: p, deps: deps})
		return nil
	}
	for _, w := range wanted {
		if err := visit(w, []string{"qemu-assets"}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func modDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading kernel module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("kernel module %s has no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("reading .modinfo of %s: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}
