package throttle_test

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/vmvault/vmvault/engine/throttle"
)

func ExampleParseSchedule() {
	s, err := throttle.ParseSchedule("Mon-Fri 08:00-18:00=20MiB/s,Fri 22:00-06:00=100Mbit/s,*=0")
	if err != nil {
		panic(err)
	}
	for _, at := range []string{"2026-11-26 09:30", "2026-11-26 19:00", "2026-11-28 05:00"} {
		t, _ := time.Parse("2006-01-02 15:04", at)
		fmt.Printf("%s %s: %s\n", t.Weekday().String()[:3], at, throttle.FormatRate(s.RateAt(t)))
	}
	// Output:
	// Thu 2026-11-26 09:30: 20MiB/s
	// Thu 2026-11-26 19:00: unlimited
	// Sat 2026-11-28 05:00: 11.92MiB/s
}

func ExampleLimiter() {
	// One limiter per budget; every restore stream draws from it.
	l := throttle.New(throttle.Fixed(64 << 20))
	ctx := context.Background()
	n, err := io.Copy(l.Writer(ctx, io.Discard), strings.NewReader("disk image bytes"))
	fmt.Println(n, err)
	// Output: 16 <nil>
}
