package pagefile

import (
	"reflect"
	"testing"

	"github.com/vmvault/vmvault/vhdxfs/vdisk"
)

func TestSubtract(t *testing.T) {
	e := func(off, l int64) vdisk.Extent { return vdisk.Extent{Off: off, Len: l} }
	for _, c := range []struct {
		alloc, ex, want []vdisk.Extent
	}{
		{[]vdisk.Extent{e(0, 100)}, nil, []vdisk.Extent{e(0, 100)}},
		{[]vdisk.Extent{e(0, 100)}, []vdisk.Extent{e(10, 10)}, []vdisk.Extent{e(0, 10), e(20, 80)}},
		{[]vdisk.Extent{e(0, 100)}, []vdisk.Extent{e(0, 100)}, nil},
		{[]vdisk.Extent{e(0, 10), e(20, 10), e(40, 10)}, []vdisk.Extent{e(5, 20)}, []vdisk.Extent{e(0, 5), e(25, 5), e(40, 10)}},
		{[]vdisk.Extent{e(0, 10), e(20, 10)}, []vdisk.Extent{e(10, 10), e(29, 100)}, []vdisk.Extent{e(0, 10), e(20, 9)}},
		{[]vdisk.Extent{e(50, 10)}, []vdisk.Extent{e(0, 10), e(55, 1), e(70, 5)}, []vdisk.Extent{e(50, 5), e(56, 4)}},
	} {
		if got := Subtract(c.alloc, c.ex); !reflect.DeepEqual(got, c.want) {
			t.Errorf("Subtract(%v, %v) = %v, want %v", c.alloc, c.ex, got, c.want)
		}
	}
}
