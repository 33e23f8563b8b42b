package engine

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// ForgetOptions select recovery points to forget: the explicit IDs, plus,
// when a policy is given, every point the policy does not keep. Retention
// is per VM: KeepLast newest points and every point younger than
// KeepWithin are kept; the newest point is always kept by a policy.
type ForgetOptions struct {
	VM         string   // name or GUID; "" with Group or All
	Group      string   // every VM of this protection group
	All        bool     // every VM
	IDs        []string // explicit recovery points (VM required)
	KeepLast   int
	KeepWithin time.Duration
	DryRun     bool
	now        func() time.Time
}

// Forgotten is one recovery point a Forget removed (or would remove).
type Forgotten struct {
	VM     string    `json:"vm"`
	VMGUID string    `json:"vm_guid"`
	ID     string    `json:"id"`
	Time   time.Time `json:"time"`
}

// Forget removes recovery point pointers: the points disappear from every
// listing at once. Their chunks stay until a prune (chunkstore garbage
// collection) removes the ones no remaining manifest references.
func (c *Catalog) Forget(o ForgetOptions) ([]Forgotten, error) {
	if len(o.IDs) > 0 && o.VM == "" {
		return nil, errors.New("engine: forget: recovery point IDs need a VM")
	}
	policy := o.KeepLast > 0 || o.KeepWithin > 0
	if !policy && len(o.IDs) == 0 {
		return nil, errors.New("engine: forget: nothing to forget (give recovery point IDs, --keep-last or --keep-within)")
	}
	now := time.Now
	if o.now != nil {
		now = o.now
	}
	var vms []VM
	switch {
	case o.VM != "":
		vm, err := c.FindVM(o.VM)
		if err != nil {
			return nil, err
		}
		vms = []VM{vm}
	case o.Group != "" || o.All:
		all, err := c.ListVMs()
		if err != nil {
			return nil, err
		}
		for _, vm := range all {
			if o.All || vm.Group == o.Group {
				vms = append(vms, vm)
			}
		}
	default:
		return nil, errors.New("engine: forget: give a VM, a group or all")
	}
	var out []Forgotten
	for _, vm := range vms {
		ps, err := listPointers(c.cat, vm.GUID)
		if err != nil {
			return nil, err
		}
		drop := map[string]bool{}
		for _, id := range o.IDs {
			found := false
			for _, p := range ps {
				if p.ID == id {
					found = true
				}
			}
			if !found {
				return nil, fmt.Errorf("engine: forget: VM %s: %s: %w", vm.Name, id, ErrUnknownRP)
			}
			drop[id] = true
		}
		if policy {
			for i, p := range ps {
				age := len(ps) - 1 - i // 0 = newest
				keep := age == 0 || age < o.KeepLast || (o.KeepWithin > 0 && now().Sub(p.Time) < o.KeepWithin)
				if !keep {
					drop[p.ID] = true
				}
			}
		}
		for _, p := range ps {
			if !drop[p.ID] {
				continue
			}
			if !o.DryRun {
				if err := os.Remove(c.cat.path(rpsDir, vm.GUID, p.ID+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
					return out, fmt.Errorf("engine: forget: %w", err)
				}
			}
			out = append(out, Forgotten{VM: vm.Name, VMGUID: vm.GUID, ID: p.ID, Time: p.Time})
		}
		if !o.DryRun && len(drop) > 0 {
			if err := syncDir(c.cat.path(rpsDir, vm.GUID)); err != nil {
				return out, fmt.Errorf("engine: forget: %w", err)
			}
		}
	}
	return out, nil
}
