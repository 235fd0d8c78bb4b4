// warmer.h: one background thread that runs a job when asked, and can be told to stop it early. The engine's use
// (Encoder::warm_caches): an encoder idle for a while has had its packed weights pushed out of the caches (by other
// processes, or by the machine's other tenants; measured on a 2-vCPU VM: an int8 MiniLM forward of one short query
// takes ~0.49 ms back to back and ~1.06 ms after a 50 ms pause, the same after reading 64 MB of other memory), so
// the next call's forward would fetch them from memory. Read back by another core while the call's text is still
// being parsed, checked and tokenized, they are in the shared cache when the forward starts.
//
// The thread is created on first use and lives as long as the Warmer. After fork() the child has no such thread
// (only the forking thread is copied): the Warmer notices by its pid and starts another when asked.
#pragma once
#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace bortengine {

class Warmer {
  public:
    // job(stop): does its work, returning early once stop reads true (it should look every few microseconds).
    using Job = std::function<void(const std::atomic<bool>& stop)>;
    explicit Warmer(Job job) : job_(std::move(job)) {}
    ~Warmer();  // stops a running job and joins the thread
    Warmer(const Warmer&) = delete;
    Warmer& operator=(const Warmer&) = delete;

    // Runs the job on the warmer's thread, on another CPU than the caller's, and returns at once (true); a job still
    // running goes on instead (one at a time). False if the caller may run on one CPU only: the job would take it.
    bool start();
    // Asks a running job to end (without waiting for it): what a forward does as it starts, since the job would
    // take a core the forward's threads run on.
    void stop() { stop_.store(true, std::memory_order_relaxed); }

    // For tests: jobs started, and those that returned after being asked to stop.
    std::uint64_t started() const { return started_.load(std::memory_order_relaxed); }
    std::uint64_t stopped() const { return stopped_.load(std::memory_order_relaxed); }
    bool running() const { return running_.load(std::memory_order_acquire); }  // asked for and not yet ended

  private:
    void main();
    // In a forked child: forget the parent's thread and what it may have held (warmer.cc).
    void forget_parents();
    // Keeps the warmer's thread off the CPU the caller runs on (false: no other CPU is allowed to the caller).
    bool elsewhere();

    Job job_;
    std::mutex mu_;
    std::condition_variable cv_;
    bool wanted_ = false, quit_ = false;  // guarded by mu_
    std::atomic<bool> running_{false};
    std::atomic<bool> stop_{false};
    std::atomic<std::uint64_t> started_{0}, stopped_{0};
    std::unique_ptr<std::thread> thread_;
    pid_t pid_ = 0;  // the process thread_ runs in
    int kept_off_ = -1;  // the CPU the thread was last kept off, guarded by mu_
};

}  // namespace bortengine
