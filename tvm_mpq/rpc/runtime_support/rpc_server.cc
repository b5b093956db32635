// tvm_rpc: a minimal TVM RPC server for a Linux board, written for tvm-mpq.
//
//   tvm_rpc server [--host=127.0.0.1] [--port=9090] [--port-end=9199]
//                  [--tracker=HOST:PORT] [--key=KEY] [--custom-addr=ADDR] [--work-dir=DIR]
//
// Speaks the same protocol as TVM's Python server (python -m tvm.exec.rpc_server):
//  * tracker (if --tracker): int32 magic 0x2F271 both ways, then int32-length-prefixed JSON
//    messages: [UPDATE_INFO=5, {"key": "server:KEY", "addr": [ADDR, PORT]}] and
//    [PUT=3, "KEY", [PORT, MATCHKEY], ADDR]; while idle it asks [GET_PENDING_MATCHKEYS=7]
//    every 2 s and re-registers under a fresh match key when a client took the slot and
//    never came. Each reply to PUT/UPDATE_INFO is the JSON integer 0 (SUCCESS).
//  * client: int32 0xFF271, int32 length + "client:MATCHKEY [-timeout=S]"; the server answers
//    0xFF271 (or 0xFF273 = key mismatch) and int32 length + "server:KEY".
// Each session runs in a forked child (a crashing kernel only ends its session) inside a fresh
// work directory, serving the runtime's own RPC loop (global "rpc.ServerLoop"); the functions
// the client side expects ("tvm.rpc.server.workpath", "tvm.rpc.server.load_module") are
// registered here, upload/download/remove come with the runtime (rpc_server_env.cc).
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/runtime/base.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include "support/socket.h"

namespace {

using tvm::ffi::Function;
using tvm::support::SockAddr;
using tvm::support::TCPSocket;

constexpr int32_t kRPCMagic = 0xFF271;
constexpr int32_t kTrackerMagic = 0x2F271;
constexpr int32_t kCodeMismatch = kRPCMagic + 2;
constexpr int kTrackerPut = 3;
constexpr int kTrackerUpdateInfo = 5;
constexpr int kTrackerPendingKeys = 7;
constexpr int kPingMs = 2000;
constexpr int kUnmatchedLimitMs = 6000;

std::string g_work_dir;  // the current session's directory (set in the child)
volatile sig_atomic_t g_stop = 0;  // SIGTERM/SIGINT seen: end the session, clean up, exit

void OnStopSignal(int) { g_stop = 1; }

struct Options {
  std::string host = "127.0.0.1";  // loopback unless --host says otherwise
  int port = 9090;
  int port_end = 9199;
  std::string tracker;  // HOST:PORT, empty = standalone
  std::string key;
  std::string custom_addr;
  std::string work_root;
};

void Log(const std::string& msg) {
  std::cerr << "[tvm_rpc] " << msg << std::endl;
}

[[noreturn]] void Usage(const std::string& err) {
  if (!err.empty()) std::cerr << "tvm_rpc: " << err << "\n";
  std::cerr << "usage: tvm_rpc server [--host=127.0.0.1] [--port=9090] [--port-end=9199]\n"
               "                      [--tracker=HOST:PORT] [--key=KEY] [--custom-addr=ADDR]\n"
               "                      [--work-dir=DIR]\n";
  std::exit(err.empty() ? 0 : 2);
}

Options ParseArgs(int argc, char** argv) {
  Options o;
  if (argc < 2 || std::string(argv[1]) != "server") Usage(argc < 2 ? "missing command" : "");
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h" || a == "--help") Usage("");
    std::string name = a, value;
    size_t eq = a.find('=');
    if (eq != std::string::npos) {
      name = a.substr(0, eq);
      value = a.substr(eq + 1);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      Usage("missing value for " + a);
    }
    try {
      if (name == "--host") o.host = value;
      else if (name == "--port") o.port = std::stoi(value);
      else if (name == "--port-end") o.port_end = std::stoi(value);
      else if (name == "--tracker") o.tracker = value;
      else if (name == "--key") o.key = value;
      else if (name == "--custom-addr") o.custom_addr = value;
      else if (name == "--work-dir") o.work_root = value;
      else Usage("unknown option " + name);
    } catch (const std::logic_error&) {
      Usage("bad number in " + a);
    }
  }
  if (o.port_end < o.port) o.port_end = o.port;
  if (!o.tracker.empty() && o.key.empty()) Usage("--tracker needs --key");
  return o;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

std::string RandomMatchKey(const std::string& key) {
  static std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> u(0.0, 1.0);
  std::ostringstream os;
  os.precision(17);
  os << key << ":" << u(rng);
  return os.str();
}

/*! \brief The connection to the tracker; every call throws on I/O failure. */
class TrackerConn {
 public:
  bool connected() const { return !sock_.BadSocket(); }
  void Close() { sock_.Close(); }

  void Connect(const std::string& addr, const std::string& key, const std::string& custom_addr,
               int port) {
    size_t colon = addr.rfind(':');
    if (colon == std::string::npos) throw std::runtime_error("--tracker must be HOST:PORT");
    std::string host = addr.substr(0, colon);
    if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
    SockAddr sa(host.c_str(), std::stoi(addr.substr(colon + 1)));
    sock_.Create(sa.ss_family());
    if (!sock_.Connect(sa)) {
      sock_.Close();
      throw std::runtime_error("cannot connect to tracker " + addr);
    }
    int32_t magic = kTrackerMagic;
    sock_.SendAll(&magic, sizeof(magic));
    if (sock_.RecvAll(&magic, sizeof(magic)) != sizeof(magic) || magic != kTrackerMagic) {
      sock_.Close();
      throw std::runtime_error(addr + " is not a TVM RPC tracker");
    }
    std::string addr_json = custom_addr.empty() ? "null" : JsonString(custom_addr);
    Expect0(Call("[" + std::to_string(kTrackerUpdateInfo) + ", {\"key\": " +
                 JsonString("server:" + key) + ", \"addr\": [" + addr_json + ", " +
                 std::to_string(port) + "]}]"));
  }

  void Put(const std::string& key, int port, const std::string& matchkey,
           const std::string& custom_addr) {
    std::string addr_json = custom_addr.empty() ? "null" : JsonString(custom_addr);
    Expect0(Call("[" + std::to_string(kTrackerPut) + ", " + JsonString(key) + ", [" +
                 std::to_string(port) + ", " + JsonString(matchkey) + "], " + addr_json + "]"));
  }

  /*! \brief Whether the tracker still lists matchkey as waiting for a client. */
  bool IsPending(const std::string& matchkey) {
    std::string reply = Call("[" + std::to_string(kTrackerPendingKeys) + "]");
    return reply.find(JsonString(matchkey)) != std::string::npos;
  }

 private:
  std::string Call(const std::string& msg) {
    sock_.SendBytes(msg);
    return sock_.RecvBytes();
  }
  static void Expect0(const std::string& reply) {
    if (reply.find_first_not_of(" \n") == std::string::npos ||
        reply.substr(reply.find_first_not_of(" \n"), 1) != "0") {
      throw std::runtime_error("tracker refused: " + reply);
    }
  }
  TCPSocket sock_;
};

/*! \brief A client's path resolved inside the session's work directory; an absolute path or
 * one that leaves it ("..", symlinks) is refused (upload, download, remove and
 * load_module all go through here). */
std::string Confine(const std::string& name) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path root = fs::weakly_canonical(g_work_dir, ec);
  fs::path full = fs::weakly_canonical(root / name, ec);
  std::string r = root.string(), f = full.string();
  bool inside = !ec && f.compare(0, r.size(), r) == 0 && (f.size() == r.size() || f[r.size()] == '/');
  if ((!name.empty() && name[0] == '/') || !inside) {
    TVM_FFI_THROW(ValueError) << "path '" << name << "' is outside this server's work directory";
  }
  return f;
}

/*! \brief What this server runs on, for the client's measurement records: the kernel's
 * uname fields and the TVM runtime version (JSON). */
std::string ServerInfo() {
  struct utsname u {};
  uname(&u);
  std::ostringstream os;
  os << "{\"server\": \"tvm-mpq tvm_rpc\", \"tvm_version\": \"" << TVM_VERSION
     << "\", \"sysname\": \"" << u.sysname << "\", \"release\": \"" << u.release
     << "\", \"machine\": \"" << u.machine << "\", \"nodename\": \"" << u.nodename << "\"}";
  return os.str();
}

void RegisterServerEnv() {
  Function::SetGlobal("tvm_mpq.server_info", Function::FromTyped([]() { return ServerInfo(); }),
                      true);
  Function::SetGlobal("tvm.rpc.server.workpath",
                      Function::FromTyped([](std::string name) { return Confine(name); }), true);
  Function::SetGlobal("tvm.rpc.server.load_module", Function::FromTyped([](std::string name) {
                        std::string path = Confine(name);
                        Log("load_module " + path);
                        return tvm::ffi::Module::LoadFromFile(path);
                      }),
                      true);
}

/*! \brief Child process: serve one session inside work_dir, then exit. */
[[noreturn]] void ServeSession(int fd, const std::string& work_dir) {
  g_work_dir = work_dir;
  int rc = 0;
  try {
    std::filesystem::current_path(g_work_dir);
    auto loop = Function::GetGlobalRequired("rpc.ServerLoop");
    loop(static_cast<int64_t>(fd));
  } catch (const std::exception& e) {
    Log(std::string("session ended with an error: ") + e.what());
    rc = 1;
  }
  _exit(rc);
}

/*! \brief Key handshake with a connecting client; returns its options or false to drop it. */
bool Handshake(TCPSocket* conn, const std::string& matchkey, const std::string& key,
               std::map<std::string, std::string>* opts) {
  int32_t magic = 0;
  if (conn->RecvAll(&magic, sizeof(magic)) != sizeof(magic) || magic != kRPCMagic) return false;
  std::string client_key = conn->RecvBytes();
  std::istringstream is(client_key);
  std::string head, tok;
  is >> head;
  if (head != "client:" + matchkey) {
    int32_t code = kCodeMismatch;
    conn->SendAll(&code, sizeof(code));
    Log("mismatched client key '" + head + "'");
    return false;
  }
  while (is >> tok) {
    size_t eq = tok.find('=');
    if (tok.rfind("-", 0) == 0 && eq != std::string::npos) {
      (*opts)[tok.substr(1, eq - 1)] = tok.substr(eq + 1);
    }
  }
  magic = kRPCMagic;
  conn->SendAll(&magic, sizeof(magic));
  conn->SendBytes("server:" + key);
  return true;
}

/*! \brief Run the session in a forked child and a fresh work directory (removed afterwards,
 * also when the child crashed or was killed); kill it after timeout_s (0 = none). */
void RunSession(TCPSocket conn, TCPSocket* listener, TrackerConn* tracker, double timeout_s,
                const std::string& work_root) {
  std::string work_dir = work_root + "/tvm_rpc_XXXXXX";
  if (mkdtemp(work_dir.data()) == nullptr) {
    Log("cannot create a work directory under " + work_root);
    conn.Close();
    return;
  }
  pid_t pid = fork();
  if (pid < 0) {
    Log("fork failed");
    conn.Close();
    return;
  }
  if (pid == 0) {
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    listener->Close();
    tracker->Close();
    ServeSession(conn.sockfd, work_dir);
  }
  auto start = std::chrono::steady_clock::now();
  int status = 0;
  while (true) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) break;
    if (r < 0 && errno != EINTR) break;
    if (g_stop) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (timeout_s > 0 && dt > timeout_s) {
      Log("session timed out, killing it");
      if (auto f = tvm::ffi::Function::GetGlobal("rpc.ReturnException")) {
        std::ostringstream msg;
        msg << "RPCSessionTimeoutError: Your " << timeout_s
            << "s session has expired, try to increase the \"session_timeout\" value.";
        try {
          (*f)(static_cast<int>(conn.sockfd), tvm::ffi::String(msg.str()));
        } catch (const std::exception&) {
        }
      }
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (WIFSIGNALED(status)) Log("session process killed by signal " + std::to_string(WTERMSIG(status)));
  std::error_code ec;
  std::filesystem::remove_all(work_dir, ec);
  conn.Close();
}

}  // namespace

int main(int argc, char** argv) {
  Options o = ParseArgs(argc, argv);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction stop_action {};
  stop_action.sa_handler = OnStopSignal;  // no SA_RESTART: poll() returns EINTR, the loop ends
  sigaction(SIGTERM, &stop_action, nullptr);
  sigaction(SIGINT, &stop_action, nullptr);
  if (o.work_root.empty()) {
    const char* tmp = std::getenv("TMPDIR");
    o.work_root = tmp != nullptr ? tmp : "/tmp";
  }
  if (o.key.empty()) o.key = "board";
  RegisterServerEnv();

  TCPSocket listener;
  int port = -1;
  for (int p = o.port; p <= o.port_end; ++p) {
    SockAddr sa(o.host.c_str(), p);
    listener.Create(sa.ss_family());
    listener.SetReuseAddr();
    if (listener.Bind(sa)) {
      port = p;
      break;
    }
    listener.Close();
  }
  if (port < 0) {
    Log("no free port in " + std::to_string(o.port) + ".." + std::to_string(o.port_end));
    return 1;
  }
  listener.Listen();
  Log("listening on " + o.host + ":" + std::to_string(port) + " key=" + o.key +
      (o.tracker.empty() ? "" : " tracker=" + o.tracker));

  TrackerConn tracker;
  while (!g_stop) {
    std::string matchkey = o.tracker.empty() ? o.key : RandomMatchKey(o.key);
    try {
      if (!o.tracker.empty()) {
        if (!tracker.connected()) tracker.Connect(o.tracker, o.key, o.custom_addr, port);
        tracker.Put(o.key, port, matchkey, o.custom_addr);
      }
      int unmatched_ms = 0;
      SockAddr peer;
      TCPSocket conn;
      std::map<std::string, std::string> opts;
      while (conn.BadSocket()) {
        pollfd pfd{listener.sockfd, POLLIN, 0};
        int r = poll(&pfd, 1, o.tracker.empty() ? -1 : kPingMs);
        if (g_stop) break;
        if (r < 0 && errno == EINTR) continue;
        if (r > 0) {
          conn = listener.Accept(&peer);
          opts.clear();
          if (!Handshake(&conn, matchkey, o.key, &opts)) conn.Close();  // keep waiting
          continue;
        }
        if (!o.tracker.empty()) {
          unmatched_ms = tracker.IsPending(matchkey) ? 0 : unmatched_ms + kPingMs;
          if (unmatched_ms > kUnmatchedLimitMs) {  // handed to a client that never came
            matchkey = RandomMatchKey(o.key);
            tracker.Put(o.key, port, matchkey, o.custom_addr);
            unmatched_ms = 0;
          }
        }
      }
      if (g_stop) break;
      Log("session from " + peer.AsString());
      double timeout_s = opts.count("timeout") ? std::stod(opts["timeout"]) : 0.0;
      RunSession(conn, &listener, &tracker, timeout_s, o.work_root);
      Log("session from " + peer.AsString() + " finished");
    } catch (const std::exception& e) {
      if (g_stop) break;
      Log(std::string("error: ") + e.what() + "; retrying in 2 s");
      tracker.Close();
      std::this_thread::sleep_for(std::chrono::milliseconds(2000));
    }
  }
  Log("stopped");
  listener.Close();
  tracker.Close();
  return 0;
}
