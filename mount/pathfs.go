package mount

import (
	"context"
	"fmt"
	"io/fs"
	"path"
	"strings"

	"github.com/vmvault/vmvault/vhdxfs/guest"
)

// The path API gives the tree with io/fs path semantics ("." is the root,
// "vm/rp/volumes/disk-p2/Users", no leading slash, symlinks never
// followed): what `vmvault files` and copyout need (Tree satisfies
// copyout.Source), and what the path-based cgofuse adapter uses.

// CleanPath turns a user or FUSE path ("/a/b/", "a//b", "") into an io/fs
// path ("a/b", ".").
func CleanPath(p string) string {
	p = strings.Trim(path.Clean("/"+strings.ReplaceAll(p, "\\", "/")), "/")
	if p == "" {
		return "."
	}
	return p
}

// Resolve walks name from the root without following symlinks.
func (t *Tree) Resolve(ctx context.Context, name string) (*Node, error) {
	if !fs.ValidPath(name) {
		return nil, fmt.Errorf("mount: %q: %w", name, fs.ErrInvalid)
	}
	n := t.root
	if name == "." {
		return n, nil
	}
	for _, el := range strings.Split(name, "/") {
		c, err := n.Lookup(ctx, el)
		if err != nil {
			return nil, err
		}
		n = c
	}
	return n, nil
}

// Stat describes name without following a final symlink.
func (t *Tree) Stat(name string) (guest.FileInfo, error) {
	ctx := context.Background()
	n, err := t.Resolve(ctx, name)
	if err != nil {
		return guest.FileInfo{}, err
	}
	return n.Stat(ctx)
}

// ReadDir lists a directory, sorted by name.
func (t *Tree) ReadDir(name string) ([]guest.FileInfo, error) {
	ctx := context.Background()
	n, err := t.Resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	kids, err := n.ReadDir(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]guest.FileInfo, 0, len(kids))
	for _, k := range kids {
		fi, err := k.Stat(ctx)
		if err != nil {
			continue // a latest link whose VM just lost its last recovery point
		}
		out = append(out, fi)
	}
	return out, nil
}

// Open opens a regular file; the result is a *Handle.
func (t *Tree) Open(name string) (guest.File, error) {
	ctx := context.Background()
	n, err := t.Resolve(ctx, name)
	if err != nil {
		return nil, err
	}
	return n.Open(ctx)
}

// Readlink returns a symlink's target.
func (t *Tree) Readlink(name string) (string, error) {
	ctx := context.Background()
	n, err := t.Resolve(ctx, name)
	if err != nil {
		return "", err
	}
	return n.Readlink(ctx)
}

// maxSymlinkHops bounds symlink resolution (the kernel's limit).
const maxSymlinkHops = 40

// Follow resolves name the way a shell command would: symlinks in the middle
// of the path (and at its end when final is set) are followed, as long as
// their targets stay inside the tree. It is what lets `vmvault files ls
// web01/latest/volumes` work; a guest link with an absolute target refers
// to the guest's root, not ours, and is an error.
func (t *Tree) Follow(ctx context.Context, name string, final bool) (*Node, error) {
	if !fs.ValidPath(name) {
		return nil, fmt.Errorf("mount: %q: %w", name, fs.ErrInvalid)
	}
	var parts []string
	if name != "." {
		parts = strings.Split(name, "/")
	}
	n, hops := t.root, 0
	for i := 0; i < len(parts); i++ {
		c, err := n.Lookup(ctx, parts[i])
		if err != nil {
			return nil, err
		}
		last := i == len(parts)-1
		if c.Mode()&fs.ModeSymlink == 0 || (last && !final) {
			n = c
			continue
		}
		if hops++; hops > maxSymlinkHops {
			return nil, fmt.Errorf("mount: %s: too many levels of symlinks: %w", name, fs.ErrInvalid)
		}
		target, err := c.Readlink(ctx)
		if err != nil {
			return nil, err
		}
		np := path.Join(n.path, target)
		if path.IsAbs(target) || np == ".." || strings.HasPrefix(np, "../") {
			return nil, fmt.Errorf("mount: %s: symlink %s -> %s leads outside the tree: %w", name, c.path, target, fs.ErrNotExist)
		}
		rest := parts[i+1:]
		parts = nil
		if np != "." {
			parts = strings.Split(np, "/")
		}
		parts = append(parts, rest...)
		n, i = t.root, -1
	}
	return n, nil
}
