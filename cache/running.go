package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// Running is a set of caches running on this host, as it recorded itself:
// what `pullthrough status`, `config` and `prefetch` find without being
// told ports or storage.
type Running struct {
	PID     int               `json:"pid"`
	Started time.Time         `json:"started"`
	Mode    string            `json:"mode"`
	Listen  []string          `json:"listen"`
	Root    string            `json:"storage_root"`
	Caches  []RunningCache    `json:"caches"`
	Labels  map[string]string `json:"labels,omitempty"`
	file    string
}

// RunningCache is one cache of a Running set.
type RunningCache struct {
	Host    string `json:"host"`
	URL     string `json:"url"`
	Port    int    `json:"port"`
	Storage string `json:"storage"`
}

// RunDir is where running sets record themselves: under the user's cache
// directory whatever storage they use, so that one place lists them all.
// PULLTHROUGH_RUN_DIR overrides it (tests keep theirs apart).
func RunDir() (string, error) {
	if d := os.Getenv("PULLTHROUGH_RUN_DIR"); d != "" {
		return d, nil
	}
	root, err := DefaultStorageRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "run"), nil
}

var runSeq atomic.Int64

// record writes the set's record; Close removes it. A failure to write it
// costs only discovery.
func (s *Set) record() {
	dir, err := RunDir()
	if err != nil || os.MkdirAll(dir, 0o755) != nil {
		return
	}
	r := Running{PID: os.Getpid(), Started: time.Now().UTC(), Mode: s.mode.String(), Listen: s.addrs, Root: s.root, Labels: s.labels}
	if s.listenAll {
		r.Listen = []string{"0.0.0.0"}
	}
	for _, c := range s.caches {
		r.Caches = append(r.Caches, RunningCache{Host: c.up.Host, URL: redactURL(c.up.URL), Port: c.port, Storage: c.storage})
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return
	}
	name := filepath.Join(dir, strconv.Itoa(os.Getpid())+"-"+strconv.FormatInt(runSeq.Add(1), 10)+".json")
	tmp := name + ".tmp"
	if os.WriteFile(tmp, b, 0o644) == nil && os.Rename(tmp, name) == nil {
		s.runFile = name
	}
}

func (s *Set) unrecord() {
	if s.runFile != "" {
		os.Remove(s.runFile)
	}
}

// ListRunning returns the sets running on this host, newest first. Records
// of processes that are gone are removed.
func ListRunning() ([]Running, error) {
	dir, err := RunDir()
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", dir, err)
	}
	var out []Running
	for _, e := range ents {
		if filepath.Ext(e.Name()) != ".json" {
			continue
		}
		p := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var r Running
		if json.Unmarshal(b, &r) != nil || r.PID <= 0 {
			continue
		}
		if !alive(r.PID) {
			os.Remove(p)
			continue
		}
		r.file = p
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.After(out[j].Started) })
	return out, nil
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
