// An independent SCM_RIGHTS peer for fd-queue's interop tests, on Go's standard library
// only: syscall.UnixRights to send, syscall.ParseSocketControlMessage and
// syscall.ParseUnixRights to receive, over net.UnixConn.
//
//	peer send <socket path> <file>
//	    Connects, writes "ab" with no fds, waits for one acknowledgement byte (so the
//	    two writes cannot reach the receiver as one chunk), then writes "CD" with two
//	    fds in one SCM_RIGHTS message: <file> read-only and the write end of a new pipe.
//	    It closes its copies, reads the pipe to end-of-file and prints {"pipe": ...}.
//
//	peer recv <socket path>
//	    Connects and reads ONE byte per ReadMsgUnix until end of stream. For each fd it
//	    prints a JSON line (the byte it came with, dev, ino, kind, a file's first bytes;
//	    into a pipe open for writing it writes "go <pid> wrote this"), and at the end
//	    {"bytes": ..., "fds": <count>}.
//
// Every stdout line is JSON; {"connected": <pid>} is printed once connected.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
)

const scmMaxFd = 253

func check(err error, what string) {
	if err != nil {
		fmt.Fprintf(os.Stderr, "peer.go: %s: %v\n", what, err)
		os.Exit(2)
	}
}

func emit(value any) {
	line, err := json.Marshal(value)
	check(err, "json")
	fmt.Println(string(line))
}

func connect(path string) *net.UnixConn {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	check(err, "dial")
	emit(map[string]int{"connected": os.Getpid()})
	return conn
}

func send(path, file string) {
	conn := connect(path)
	_, err := conn.Write([]byte("ab"))
	check(err, "write ab")
	ack := make([]byte, 1)
	_, err = io.ReadFull(conn, ack)
	check(err, "read ack")

	f, err := os.Open(file)
	check(err, "open")
	r, w, err := os.Pipe()
	check(err, "pipe")
	n, oobn, err := conn.WriteMsgUnix([]byte("CD"), syscall.UnixRights(int(f.Fd()), int(w.Fd())), nil)
	check(err, "WriteMsgUnix")
	f.Close()
	w.Close()
	text, err := io.ReadAll(r)
	check(err, "read pipe")
	r.Close()
	conn.Close()
	emit(map[string]any{"sent": n, "oob": oobn, "ack": string(ack), "pipe": string(text)})
}

func describe(fd int, index int) map[string]any {
	var st syscall.Stat_t
	check(syscall.Fstat(fd, &st), "fstat")
	fdFlags, err := fcntl(fd, syscall.F_GETFD)
	check(err, "F_GETFD")
	flFlags, err := fcntl(fd, syscall.F_GETFL)
	check(err, "F_GETFL")
	info := map[string]any{
		"byte":    index,
		"dev":     fmt.Sprint(st.Dev),
		"ino":     fmt.Sprint(st.Ino),
		"cloexec": fdFlags&syscall.FD_CLOEXEC != 0,
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		buf := make([]byte, 256)
		n, err := syscall.Pread(fd, buf, 0)
		check(err, "pread")
		info["kind"] = "file"
		info["content"] = string(buf[:n])
	case syscall.S_IFIFO:
		info["kind"] = "pipe"
		if flFlags&syscall.O_ACCMODE == syscall.O_WRONLY {
			text := fmt.Sprintf("go %d wrote this", os.Getpid())
			_, err := syscall.Write(fd, []byte(text))
			check(err, "write pipe")
			info["wrote"] = text
		}
	default:
		info["kind"] = "other"
	}
	return info
}

func fcntl(fd int, cmd int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), uintptr(cmd), 0)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

func recv(path string) {
	conn := connect(path)
	var data []byte
	total := 0
	buf := make([]byte, 1)
	oob := make([]byte, syscall.CmsgSpace(scmMaxFd*4))
	for {
		n, oobn, flags, _, err := conn.ReadMsgUnix(buf, oob)
		if errors.Is(err, io.EOF) {
			break
		}
		check(err, "ReadMsgUnix")
		if flags&syscall.MSG_CTRUNC != 0 {
			check(fmt.Errorf("MSG_CTRUNC"), "ReadMsgUnix")
		}
		if oobn > 0 {
			messages, err := syscall.ParseSocketControlMessage(oob[:oobn])
			check(err, "ParseSocketControlMessage")
			for _, m := range messages {
				fds, err := syscall.ParseUnixRights(&m)
				if err != nil {
					continue // not SCM_RIGHTS
				}
				for _, fd := range fds {
					emit(describe(fd, len(data)))
					syscall.Close(fd)
					total++
				}
			}
		}
		if n == 0 {
			break
		}
		data = append(data, buf[:n]...)
	}
	conn.Close()
	emit(map[string]any{"bytes": string(data), "fds": total})
}

func main() {
	switch {
	case len(os.Args) == 4 && os.Args[1] == "send":
		send(os.Args[2], os.Args[3])
	case len(os.Args) == 3 && os.Args[1] == "recv":
		recv(os.Args[2])
	default:
		fmt.Fprintln(os.Stderr, "usage: peer send <socket> <file> | peer recv <socket>")
		os.Exit(64)
	}
}
