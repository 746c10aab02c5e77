// Package initramfs writes the "newc" cpio archives a Linux kernel unpacks
// as its initial root file system (Documentation/driver-api/early-userspace).
//
// It is the smallest writer that boots: directories, regular files and
// character devices, each with a mode, no hard links and no timestamps, so
// the same inputs give the same archive byte for byte (and the same cache
// key). The kernel also accepts the archive gzip-compressed; Write leaves
// compression to the caller.
package initramfs

import (
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// Entry is one file of the archive. Path is relative to the root and uses
// '/'; parents are created as directories when not given.
type Entry struct {
	Path string
	Mode uint32 // permission bits; the type comes from the kind of entry
	// Exactly one of the following describes the entry: Data for a
	// regular file, Dir for a directory, Dev for a character device
	// (major, minor).
	Data []byte
	Dir  bool
	Dev  *[2]uint32
}

// File types of the cpio mode field (as in stat(2)).
const (
	typeDir  = 0o040000
	typeReg  = 0o100000
	typeChar = 0o020000
)

const trailer = "TRAILER!!!"

// Write writes entries, sorted and with any missing parent directories
// added, as one newc archive ending in the trailer record.
func Write(w io.Writer, entries []Entry) error {
	all := map[string]Entry{}
	for _, e := range entries {
		p := strings.Trim(path.Clean("/"+e.Path), "/")
		if p == "" || p == "." {
			return fmt.Errorf("entry %q: want a path below the root", e.Path)
		}
		kinds := 0
		if e.Data != nil {
			kinds++
		}
		if e.Dir {
			kinds++
		}
		if e.Dev != nil {
			kinds++
		}
		if kinds > 1 {
			return fmt.Errorf("entry %q: want one of file data, directory or device, not several", e.Path)
		}
		if _, dup := all[p]; dup {
			return fmt.Errorf("entry %q: given twice", e.Path)
		}
		e.Path = p
		all[p] = e
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			if _, ok := all[dir]; !ok {
				all[dir] = Entry{Path: dir, Mode: 0o755, Dir: true}
			}
		}
	}
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	// Sorted, a parent directory always precedes what it holds.
	sort.Strings(names)
	ino := uint32(1)
	for _, p := range names {
		e := all[p]
		mode := e.Mode & 0o7777
		var major, minor uint32
		switch {
		case e.Dir:
			mode |= typeDir
		case e.Dev != nil:
			mode |= typeChar
			major, minor = e.Dev[0], e.Dev[1]
		default:
			mode |= typeReg
		}
		nlink := uint32(1)
		if e.Dir {
			nlink = 2
		}
		if err := record(w, ino, mode, nlink, major, minor, p, e.Data); err != nil {
			return fmt.Errorf("writing %q: %w", p, err)
		}
		ino++
	}
	if err := record(w, 0, 0, 1, 0, 0, trailer, nil); err != nil {
		return fmt.Errorf("writing the trailer: %w", err)
	}
	return nil
}

// record writes one header, name and body, each padded to four bytes.
func record(w io.Writer, ino, mode, nlink, rmajor, rminor uint32, name string, data []byte) error {
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize (with its NUL), check.
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+8)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = pad(buf)
	if _, err := w.Write(buf); err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	if n := len(data) % 4; n != 0 {
		_, err := w.Write(make([]byte, 4-n))
		return err
	}
	return nil
}

func pad(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
