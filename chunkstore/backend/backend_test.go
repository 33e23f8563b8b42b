package backend

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"pool0/ab/abcdef.shard", true},
		{"A-Z_a.z-0.9", true},
		{"..a", true},
		{"a..", true},
		{".tmp", true},
		{"x.tmp-1", true},
		{strings.Repeat("a", MaxSegmentLen), true},
		{"", false},
		{"/a", false},
		{"a/", false},
		{"a//b", false},
		{"..", false},
		{"a/../b", false},
		{"./a", false},
		{`a\b`, false},
		{"a\x00", false},
		{"a b", false},
		{"é", false},
		{".tmp-", false},
		{"a/.tmp-x/b", false},
		{strings.Repeat("a", MaxSegmentLen+1), false},
		{strings.Repeat("ab/", 400), false},
	} {
		err := ValidateName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) = %v, does not wrap ErrInvalidName", tc.name, err)
		}
	}
}

func TestValidatePrefix(t *testing.T) {
	for _, tc := range []struct {
		prefix string
		ok     bool
	}{
		{"", true},
		{"p", true},
		{"p/", true},
		{"p/a", true},
		{"..", true}, // partial segment: prefix of "..x"
		{".tmp-", true},
		{"/", false},
		{"/p", false},
		{"p//", false},
		{"../", false},
		{"p/../", false},
		{".tmp-1/", false},
		{"a b", false},
		{`a\`, false},
	} {
		err := ValidatePrefix(tc.prefix)
		if (err == nil) != tc.ok {
			t.Errorf("ValidatePrefix(%q) = %v, want ok=%v", tc.prefix, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidatePrefix(%q) = %v, does not wrap ErrInvalidName", tc.prefix, err)
		}
	}
}

// FuzzValidateName checks the property the local backend's safety rests on:
// a valid name, joined to a root, stays strictly inside that root, is
// already clean, and names no temp file.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a", "pool0/ab/x.shard", "..", "a/../b", "/x", `a\..\b`, ".tmp-1", "a//b", "..a/b.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidateName(name) != nil {
			return
		}
		if ValidatePrefix(name) != nil {
			t.Errorf("valid name %q is not a valid prefix", name)
		}
		root := filepath.FromSlash("/root/repo")
		p := filepath.Join(root, filepath.FromSlash(name))
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) || filepath.IsAbs(rel) {
			t.Errorf("valid name %q escapes the root: %q", name, p)
		}
		if filepath.ToSlash(rel) != name {
			t.Errorf("valid name %q is not clean: joins as %q", name, rel)
		}
		for _, seg := range strings.Split(name, "/") {
			if strings.HasPrefix(seg, ReservedPrefix) {
				t.Errorf("valid name %q has a reserved segment", name)
			}
		}
	})
}
