package cache

import (
	"context"

	"github.com/distribution/distribution/v3"
	"github.com/distribution/distribution/v3/registry/storage"
	"github.com/distribution/distribution/v3/registry/storage/driver"
	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"
)

// localView reads the cache's storage directly, next to distribution's App,
// to tell hits from misses before a request reaches the proxy. It never writes.
type localView struct {
	ns distribution.Namespace
}

func newLocalView(ctx context.Context, d driver.StorageDriver) (*localView, error) {
	ns, err := storage.NewRegistry(ctx, d)
	if err != nil {
		return nil, err
	}
	return &localView{ns: ns}, nil
}

func (l *localView) repo(ctx context.Context, name string) (distribution.Repository, bool) {
	named, err := reference.WithName(name)
	if err != nil {
		return nil, false
	}
	repo, err := l.ns.Repository(ctx, named)
	if err != nil {
		return nil, false
	}
	return repo, true
}

func (l *localView) hasTag(ctx context.Context, name, tag string) bool {
	repo, ok := l.repo(ctx, name)
	if !ok {
		return false
	}
	_, err := repo.Tags(ctx).Get(ctx, tag)
	return err == nil
}

func (l *localView) hasBlob(ctx context.Context, name string, dgst digest.Digest) bool {
	repo, ok := l.repo(ctx, name)
	if !ok {
		return false
	}
	_, err := repo.Blobs(ctx).Stat(ctx, dgst)
	return err == nil
}

func (l *localView) hasManifest(ctx context.Context, name string, dgst digest.Digest) bool {
	repo, ok := l.repo(ctx, name)
	if !ok {
		return false
	}
	ms, err := repo.Manifests(ctx)
	if err != nil {
		return false
	}
	ok, err = ms.Exists(ctx, dgst)
	return err == nil && ok
}

// has reports whether a manifest or blob route can be answered from storage.
func (l *localView) has(ctx context.Context, r route) bool {
	switch r.kind {
	case kindBlob:
		d, err := digest.Parse(r.ref)
		return err == nil && l.hasBlob(ctx, r.name, d)
	case kindManifest:
		if d, err := digest.Parse(r.ref); err == nil {
			return l.hasManifest(ctx, r.name, d)
		}
		return l.hasTag(ctx, r.name, r.ref)
	}
	return false
}
