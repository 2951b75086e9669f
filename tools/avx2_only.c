/* Makes a program see this x86-64 CPU as an AVX2-only one (Haswell to Zen 3: no AVX-512, no
 * VNNI, no AMX), so that libraries which pick their kernels from CPUID at run time
 * (onnxruntime's MLAS, oneDNN, numpy, PyTorch) run their AVX2 kernels. Loaded with LD_PRELOAD
 * (tools/avx2_only.py builds and loads it).
 *
 * How: Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, on CPUs whose /proc/cpuinfo lists
 * "cpuid_fault") turns every CPUID instruction of the process into a SIGSEGV; the handler runs
 * the real CPUID, clears the feature bits below and resumes after the instruction. Faulting is
 * per thread and inherited by threads created later: it is turned on in a constructor, before
 * the program starts any. The program's own SIGSEGV handlers still get every other fault. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012
#define BIT(n) (1u << (n))

/* Leaf 7 subleaf 0. EBX: AVX512 F, DQ, IFMA, PF, ER, CD, BW, VL. ECX: AVX512 VBMI, VBMI2,
 * VNNI, BITALG, VPOPCNTDQ. EDX: AVX512 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512-FP16,
 * AMX-TILE, AMX-INT8. */
static const uint32_t LEAF7_EBX_CLEARED = BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31);
static const uint32_t LEAF7_ECX_CLEARED = BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14);
static const uint32_t LEAF7_EDX_CLEARED = BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25);
/* Leaf 7 subleaf 1. EAX: AVX-VNNI, AVX512-BF16, AVX-IFMA. EDX: AVX-VNNI-INT8, AVX-NE-CONVERT,
 * AVX-VNNI-INT16, AVX10. */
static const uint32_t LEAF7_1_EAX_CLEARED = BIT(4) | BIT(5) | BIT(23);
static const uint32_t LEAF7_1_EDX_CLEARED = BIT(4) | BIT(5) | BIT(10) | BIT(19);

static struct sigaction program_handler; /* what the program asked for SIGSEGV: gets the other faults */
static int (*libc_sigaction)(int, const struct sigaction *, struct sigaction *);

static void masked_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t regs[4]) {
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1); /* let this one CPUID through */
    __asm__ volatile("cpuid" : "=a"(regs[0]), "=b"(regs[1]), "=c"(regs[2]), "=d"(regs[3]) : "a"(leaf), "c"(subleaf));
    syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
    if (leaf == 7 && subleaf == 0) {
        regs[1] &= ~LEAF7_EBX_CLEARED;
        regs[2] &= ~LEAF7_ECX_CLEARED;
        regs[3] &= ~LEAF7_EDX_CLEARED;
    } else if (leaf == 7 && subleaf == 1) {
        regs[0] &= ~LEAF7_1_EAX_CLEARED;
        regs[3] &= ~LEAF7_1_EDX_CLEARED;
    }
}

static void on_segv(int signal_number, siginfo_t *info, void *context) {
    greg_t *gregs = ((ucontext_t *)context)->uc_mcontext.gregs;
    const unsigned char *instruction = (const unsigned char *)gregs[REG_RIP];
    if (info->si_code == SI_KERNEL && instruction[0] == 0x0f && instruction[1] == 0xa2) { /* CPUID */
        uint32_t regs[4];
        masked_cpuid((uint32_t)gregs[REG_RAX], (uint32_t)gregs[REG_RCX], regs);
        gregs[REG_RAX] = regs[0];
        gregs[REG_RBX] = regs[1];
        gregs[REG_RCX] = regs[2];
        gregs[REG_RDX] = regs[3];
        gregs[REG_RIP] += 2;
        return;
    }
    if ((program_handler.sa_flags & SA_SIGINFO) && program_handler.sa_sigaction) {
        program_handler.sa_sigaction(signal_number, info, context);
    } else if (program_handler.sa_handler != SIG_DFL && program_handler.sa_handler != SIG_IGN) {
        program_handler.sa_handler(signal_number);
    } else {
        struct sigaction fallback;
        memset(&fallback, 0, sizeof fallback);
        fallback.sa_handler = SIG_DFL;
        libc_sigaction(SIGSEGV, &fallback, NULL); /* the fault repeats on return and ends the process as usual */
    }
}

/* The program's SIGSEGV handler (sigaction or signal) is kept aside rather than installed: ours stays first. */
int sigaction(int signal_number, const struct sigaction *action, struct sigaction *previous) {
    if (signal_number != SIGSEGV) return libc_sigaction(signal_number, action, previous);
    if (previous) *previous = program_handler;
    if (action) program_handler = *action;
    return 0;
}

sighandler_t signal(int signal_number, sighandler_t handler) {
    if (signal_number != SIGSEGV) {
        sighandler_t (*libc_signal)(int, sighandler_t) = (sighandler_t (*)(int, sighandler_t))dlsym(RTLD_NEXT, "signal");
        return libc_signal(signal_number, handler);
    }
    sighandler_t previous = (program_handler.sa_flags & SA_SIGINFO) ? SIG_DFL : program_handler.sa_handler;
    memset(&program_handler, 0, sizeof program_handler);
    program_handler.sa_handler = handler;
    return previous;
}

__attribute__((constructor)) static void mask_cpuid(void) {
    libc_sigaction = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
    struct sigaction ours;
    memset(&ours, 0, sizeof ours);
    ours.sa_sigaction = on_segv;
    ours.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&ours.sa_mask);
    program_handler.sa_handler = SIG_DFL;
    libc_sigaction(SIGSEGV, &ours, NULL);
    if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
        fprintf(stderr, "avx2_only: this CPU or kernel has no CPUID faulting (arch_prctl ARCH_SET_CPUID): "
                        "run on a machine whose /proc/cpuinfo lists cpuid_fault\n");
        _exit(2);
    }
}
