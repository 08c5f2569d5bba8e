/* A 512-byte x86 guest for tests and the demo, under TCG in well under a second.
 *
 * It prints a banner on COM1, then sleeps (hlt, woken by the BIOS timer tick) and polls the
 * PIIX4 PM1 status register for the power-button bit that QEMU's system_powerdown sets,
 * answering it by powering off through PM1 control (SLP_TYP 0 = soft off, SLP_EN). Built with
 * --defsym IGNORE_POWERDOWN=1 it never looks, like a hung guest; with --defsym POWER_OFF_ALONE=1
 * it powers off by itself after 36 timer ticks (about 2 s), like an operator's `poweroff` in the
 * guest, so that the guest's own power-off is seen from a running VM. Needs <features><acpi/>: with
 * -no-acpi QEMU has no PIIX4 PM device. SeaBIOS maps the PM registers at I/O port 0x600. */
        .code16
        .text
        .globl _start
_start:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0x7c00, %sp
        mov     $banner, %si
print:
        lodsb
        test    %al, %al
        jz      idle
        mov     %al, %bl
wait_tx:
        mov     $0x3fd, %dx             /* COM1 line status: transmitter empty? */
        in      %dx, %al
        test    $0x20, %al
        jz      wait_tx
        mov     %bl, %al
        mov     $0x3f8, %dx
        out     %al, %dx
        jmp     print
idle:
.ifndef IGNORE_POWERDOWN
        mov     $0x602, %dx             /* PM1a_EN: QEMU sets PWRBTN_STS only when enabled */
        mov     $0x0100, %ax
        out     %ax, %dx
.endif
.ifdef POWER_OFF_ALONE
        mov     $36, %cx                /* timer ticks (18.2 Hz) until the guest's own power-off */
.endif
        sti
sleep:
        hlt
.ifdef POWER_OFF_ALONE
        dec     %cx                     /* any interrupt counts; the timer's are nearly all */
        jz      poweroff
.endif
.ifndef IGNORE_POWERDOWN
        mov     $0x600, %dx             /* PM1a_STS */
        in      %dx, %ax
        test    $0x0100, %ax            /* PWRBTN_STS */
        jz      sleep
poweroff:
        mov     $0x604, %dx             /* PM1a_CNT: SLP_EN | SLP_TYP(0) */
        mov     $0x2000, %ax
        out     %ax, %dx
.endif
        jmp     sleep

banner:
        .asciz  "vmlaunch test guest: hello from COM1\r\n"

        .org    510
        .word   0xaa55
